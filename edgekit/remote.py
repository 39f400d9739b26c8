"""Measuring on a real device through its edgekit agent (`--device NAME`): the engine built here is
sent and timed there, or, where its last build step needs the device's own tool (TensorRT), its ONNX
and plan are sent and the device builds it. The numbers come back labelled as measured on the device."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.agent.client import job_settings
from edgekit.agent.security import UPLOAD_SUFFIXES
from edgekit.backends.base import Artifact, LayerTime
from edgekit.errors import BadInput
from edgekit.plan import PrecisionPlan
from edgekit.profile import ProfileSettings, side_by_side
from edgekit.targets import Target, load_target


def check_device(device, target: Target, targets_dir: list[Path]) -> None:
    """A measurement on a device is filed under its target: the two must be the same registry entry."""
    if load_target(device.target, targets_dir).name != target.name:
        raise BadInput(f"device '{device.name}' is a {device.target} ({device.url}), not a {target.name}")


def engine_files(artifact: Artifact) -> dict[str, Path]:
    """The files the agent needs to load the engine: each plain file of the artifact (an IR's .xml and
    .bin, a .tflite), by its name."""
    files = {p.name: p for p in artifact.files if Path(p).is_file() and Path(p).suffix in UPLOAD_SUFFIXES}
    if artifact.path.name not in files:
        raise BadInput(f"{artifact.path.name}: the agent takes .onnx, .xml/.bin and .tflite engines; "
                       "this one is built on the device from its ONNX instead")
    return files


@dataclass(frozen=True)
class DeviceBuild:
    """What the device builds an engine from when its last step is pending here: the ONNX, the plan,
    and the run directory its built files come back into (under device/)."""

    onnx_path: Path
    plan: PrecisionPlan
    out_dir: Path


def measure(device, artifact: Artifact, *, target: Target, settings: ProfileSettings, feed: dict[str, np.ndarray],
            source: DeviceBuild, beside: tuple[str, Artifact] | None = None) -> dict:
    """The agent's result for this engine, fed the deploy's own inputs. An engine whose last step is
    pending here (`artifact.pending`) is built on the device from `source`. With `beside`, the two
    engines are timed side by side there and the result gets `side_by_side` as a local deploy's
    report has it."""
    if artifact.pending:
        with device.client() as client:
            return client.build(source.onnx_path, target.name, source.plan.as_dict(), settings,
                                out_dir=Path(source.out_dir) / "device", dla_core=target.backend.options.get("dla_core"))
    result = profile(device, artifact, target=target, settings=settings, feed=feed,
                     beside=beside[1] if beside else None)
    if beside is not None:
        slices = result.pop("rounds")
        result["side_by_side"] = {**side_by_side(beside[0], str(beside[1].path), slices["artifact"], slices["beside"]),
                                  "where": f"device {device.name} through its agent"}
    return result


def profile(device, artifact: Artifact, *, target: Target, settings: ProfileSettings, feed: dict[str, np.ndarray],
            beside: Artifact | None = None, layer_rounds: int = 0) -> dict:
    """One profile job: the engine built here, timed on the device (beside another, in alternating
    rounds, when given; then `rounds` and `layer_rounds` hold both engines' times)."""
    with tempfile.TemporaryDirectory() as tmp, device.client() as client:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, **feed)
        return client.profile(_upload(artifact), target.name, job_settings(settings), inputs,
                              beside=None if beside is None else _upload(beside), layer_rounds=layer_rounds)


def _upload(artifact: Artifact) -> list[Path]:
    """The engine's files the agent takes, the engine first (`engine_files` says which)."""
    files = engine_files(artifact)
    return [files[artifact.path.name], *(p for name, p in files.items() if name != artifact.path.name)]


def time_pair(device, artifacts: dict[str, Artifact], *, target: Target, settings: ProfileSettings,
              feed: dict[str, np.ndarray], layer_rounds: int) -> tuple[dict[str, list[float]], dict[str, list[list[LayerTime]]]]:
    """Two engines (the sensitivity analysis's fp32 and all-int8) timed side by side on the device:
    each one's inference times, and its per-layer times over `layer_rounds` rounds."""
    (first, a), (second, b) = artifacts.items()
    result = profile(device, a, target=target, settings=settings, feed=feed, beside=b, layer_rounds=layer_rounds)
    names = {"artifact": first, "beside": second}
    times = {names[k]: [t for r in v for t in r] for k, v in result["rounds"].items()}
    layers = {names[k]: [[LayerTime(**t) for t in r] for r in v] for k, v in result["layer_rounds"].items()}
    return times, layers


def time_unit(device, model, *, target: Target, precision: str, runs: int, wall: bool) -> tuple[float, float | None, list[str]]:
    """A cost-model unit timed by the device's agent (a `unit` job), as this machine would time it here."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "unit.onnx"
        onnx.save(model, str(path))
        with device.client() as client:
            result = client.unit(path, target.name, precision, runs=runs, wall=wall)
    return result["ms"], result["wall_ms"], result["kernels"]
