"""The closed loop's yardstick: the original model's float engine, timed when the search starts.

A shared or throttling device runs one engine at different speeds minutes apart (this 2-core host:
0.66 to 1.46 ms for the same fp32 ResNet-like), so a candidate timed alone at a fast moment can pass a
budget it would miss a minute later. Each candidate is therefore timed side by side with the original
(alternating rounds) and judged at `ratio × the original's p50 at the start`: the drift between the
start and the measurement divides out. On a steady device that equals the raw p50; both are reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgekit.backends.base import Artifact, get_backend
from edgekit.deploy.result import DeployReport
from edgekit.measurer import LOCAL, Measurer
from edgekit.plan import PrecisionPlan
from edgekit.profile import ProfileSettings
from edgekit.targets import Target

FOLDER = "original-float"
NAME = "the original model"


@dataclass(frozen=True)
class Anchor:
    artifact: Artifact
    p50_ms: float  # the original's p50 when the search started (kept in FOLDER/latency.json for --resume)

    def beside(self) -> tuple[str, Artifact]:
        """What `deploy(..., beside=)` times a candidate with."""
        return NAME, self.artifact

    def judge(self, report: DeployReport) -> Measurement | None:
        """A built candidate's latency on the anchor's scale, from its deploy report; None if not measured."""
        side, latency = report.measurement and report.measurement.side_by_side, report.latency_ms
        if side is None or latency.get("kind") != "measured":
            return None
        return Measurement(round(side["ratio"] * self.p50_ms, 6), latency["p50"], side["ratio"], side["p50_ms"])


@dataclass(frozen=True)
class Measurement:
    ms: float  # ratio × the original's p50 at the start: what the budget is judged on
    raw_p50_ms: float  # the candidate's own p50 in the side-by-side timing
    ratio: float  # median over rounds of candidate p50 / original p50
    original_now_ms: float  # the original's p50 in the same timing

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def timed_original(onnx_path: Path, precision: str, target: Target, backend_name: str, run_dir: Path,
                   feed: dict, settings: ProfileSettings, measurer: Measurer = LOCAL) -> Anchor | None:
    """Build the original model in its float precision and time it where `measurer` times (here, or on
    a device through its agent), once per run directory: a resumed search keeps the first start's figure.
    None where it cannot be timed, or is built on the device itself (its tool is not here)."""
    if not measurer.reaches(target):
        return None
    backend = get_backend(backend_name)
    if not measurer.can_time(target, backend.available(target)):
        return None
    folder = Path(run_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    artifact = backend.build(onnx_path=onnx_path, plan=PrecisionPlan(precision), target=target, out_dir=folder)
    if artifact.pending:
        return None
    saved = folder / "latency.json"
    if saved.exists():
        return Anchor(artifact, json.loads(saved.read_text())["p50_ms"])
    p50 = measurer.p50(backend, artifact, target, feed, settings)
    how = f"the original's float engine timed alone on {measurer.where(target)} when the search started"
    saved.write_text(json.dumps({"p50_ms": p50, "how": how}))
    return Anchor(artifact, p50)

