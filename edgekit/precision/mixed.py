"""`--precision mixed`: the plan the sensitivity analysis makes, its Q/DQ model, and the rule that the
shipped engine is never slower than the float one (timed side by side where the device is here, the
cost model's word where it is not). Used by `edgekit.deploy`."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgekit import anchored, graph
from edgekit.backends.base import Artifact, calibration_runtime
from edgekit.calibrate.run import CalibrationResult
from edgekit.latency import Latency
from edgekit.plan import PrecisionPlan
from edgekit.precision import sensitivity
from edgekit.precision.layer_latency import predicted_latency
from edgekit.precision.timing import Timing
from edgekit.profile import time_interleaved
from edgekit.targets import Target
from edgekit.util import write_json

MIXED = "mixed"  # --precision mixed: int8 where the sensitivity analysis says it helps, float elsewhere


@dataclass(frozen=True)
class MixedChoice:
    """What `--precision mixed` shipped and why (report.json's precision.mixed): `chosen` is "mixed" or
    the float precision; `kind` says whether the two latencies were measured side by side or predicted;
    `baseline` is the float engine it is weighed against (the target's: fp16 on a Jetson), whose p50 is
    `fp32_p50_ms` (the name kept from when the baseline was always fp32)."""

    chosen: str
    kind: str
    int8_layers: int
    verdicts: dict[str, int]
    reason: str
    mixed_p50_ms: float | None = None
    fp32_p50_ms: float | None = None
    baseline: str = "fp32"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def plan_from_analysis(analysis: dict, calibration: CalibrationResult, onnx_path: Path, run_dir: Path,
                       layers: list[graph.Layer], target: Target) -> tuple[PrecisionPlan, Path, MixedChoice]:
    """The plan the sensitivity analysis makes, what to build it from (model.int8.onnx rewritten from the
    same calibration, or the float export) and the choice. On a target not measured here the choice
    against the float baseline (fp32, or fp16 on a GPU target) is the cost model's; on one measured here `never_slower` makes it after the build."""
    plan = sensitivity.mixed_plan(analysis)
    float_p = analysis["float_precision"]
    all_float = PrecisionPlan(float_p, {layer: float_p for layer in plan.layers})
    int8 = [layer for layer, p in plan.layers.items() if p == "int8"]
    counts = ", ".join(f"{n} {verdict}" for verdict, n in analysis["summary"].items() if n)
    kind = analysis["latency"]["kind"]
    choice = MixedChoice(chosen=MIXED, kind=kind, int8_layers=len(int8), verdicts=analysis["summary"],
                         reason=f"{len(int8)} of {len(plan.layers)} layers int8 ({counts}), against the {float_p} "
                                f"baseline of {target.name}", baseline=float_p)
    if not int8:
        return all_float, onnx_path, dataclasses.replace(choice, chosen=float_p, reason=(
            f"every layer stays {float_p} ({counts}): int8 harms accuracy or is slower on {target.name} wherever it applies"))
    if kind == "predicted":
        ours, theirs = predicted_latency(layers, target, plan), anchored.predict(layers, target, float_p)
        choice = dataclasses.replace(choice, mixed_p50_ms=ours.p50, fp32_p50_ms=theirs.p50)
        side = f"{ours.p50:.4f} ms vs {float_p} {theirs.p50:.4f} ms, {analysis['latency']['source']}"
        if not ours.p50 < theirs.p50:
            return all_float, onnx_path, dataclasses.replace(choice, chosen=float_p,
                                                             reason=f"mixed is predicted no faster than {float_p} ({side})")
        choice = dataclasses.replace(choice, reason=f"{choice.reason}; predicted {side}")
    summary = calibration.rewrite(int8, calibration.qdq_path)
    _record_plan(run_dir, calibration, plan.layers, summary, target)
    return plan, calibration.qdq_path, choice


def _record_plan(run_dir: Path, calibration: CalibrationResult, planned: dict[str, str], summary, target: Target) -> None:
    """scales.json and the runtime's own calibration files (TensorRT's layer precisions) follow the
    mixed plan, not the all-int8 calibration."""
    scales_path = run_dir / calibration.files.get("scales", "scales.json")
    if scales_path.is_file():
        scales = json.loads(scales_path.read_text())
        scales["planned"] = planned
        for name, entry in scales.get("tensors", {}).items():
            entry["quantized"] = name in summary.activations
        write_json(scales_path, scales)
    runtime = calibration_runtime(target)  # the backend that wrote them (calibrate's runtime=)
    if runtime is not None:
        runtime.replan_calibration_files(calibration.files, run_dir, planned)


def never_slower(timing: Timing, artifact: Artifact, plan: PrecisionPlan, onnx_path: Path, run_dir: Path,
                 choice: MixedChoice) -> tuple[PrecisionPlan, Artifact, list[float], MixedChoice]:
    """Time the mixed engine and a float engine of the same model (the plan's float precision, the
    target's baseline) side by side (interleaved, same settings); ship it unless mixed is faster. Returns the plan and engine shipped, its times and the choice."""
    backend, target, threads = timing.backend, timing.target, timing.threads
    float_p = plan.float_precision
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=f".{float_p}-") as tmp:
        reference = backend.build(onnx_path=onnx_path, plan=PrecisionPlan(float_p), target=target, out_dir=Path(tmp))
        engines = {MIXED: backend.load(artifact, target=target, threads=threads),
                   float_p: backend.load(reference, target=target, threads=threads)}
        times = time_interleaved(engines, timing.feed, timing.settings)
    p50 = {name: Latency.from_samples(t, "side by side").p50 for name, t in times.items()}
    choice = dataclasses.replace(choice, mixed_p50_ms=p50[MIXED], fp32_p50_ms=p50[float_p])
    side = f"p50 {p50[MIXED]:.4f} ms vs {float_p} {p50[float_p]:.4f} ms, measured side by side on {target.name}"
    if p50[MIXED] < p50[float_p]:
        return plan, artifact, times[MIXED], dataclasses.replace(choice, reason=f"{choice.reason}; {side}")
    fallback = PrecisionPlan(float_p, {layer: float_p for layer in plan.layers})
    return (fallback, backend.build(onnx_path=onnx_path, plan=fallback, target=target, out_dir=run_dir), times[float_p],
            dataclasses.replace(choice, chosen=float_p, reason=f"mixed is not faster than {float_p} ({side})"))
