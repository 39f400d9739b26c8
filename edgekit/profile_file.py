"""`edgekit profile ARTIFACT`: measure an engine file already built, with or without data, here or on a
device of the inventory (`edgekit.measurer`)."""

from __future__ import annotations

from pathlib import Path

from edgekit.backends.base import backend_for_file
from edgekit.errors import BadInput
from edgekit.measurer import measurer_named
from edgekit.profile import ProfileSettings
from edgekit.targets import load_target


def profile_file(artifact: Path, *, target: str | None, data: str | None, settings: ProfileSettings,
                 targets_dir: list[Path], device: str | None = None, devices_file: Path | None = None) -> dict:
    artifact = Path(artifact)
    if not artifact.is_file():
        raise BadInput(f"engine file not found: {artifact}")
    measurer = measurer_named(device, devices_file)
    tgt = load_target(target or measurer.default_target(), targets_dir)
    measurer.check(tgt, targets_dir)
    return measurer.profile_file(backend_for_file(artifact, tgt.backend.name), artifact, tgt, data, settings)
