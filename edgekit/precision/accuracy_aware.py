"""Accuracy-aware int8 (`--precision int8|mixed --max-accuracy-drop D`): the fastest plan within D.

In the spirit of NNCF's `quantize_with_accuracy_control`, but timed: start with every int8-capable
layer in int8; while the task metric on the validation split is more than D points below the source
model's, return to float the layers whose measured harm per millisecond of measured gain is worst
(the sensitivity analysis: harm = the metric's drop with that layer alone int8, gain = its profiled
time in fp32 minus int8); rebuild with the target's runtime, re-measure the metric with that engine and
its latency side by side with the float engine. Within D, the walk goes on while the plan is no faster
than float, returning at once to float the layers next in line that int8 makes slower (measured). Every step is a point of the path (report.json and
the HTML report's curve); the point shipped is the fastest one within D, and never one slower than
float: when none is faster, float ships.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.backends.base import Artifact
from edgekit.calibrate.run import CalibrationResult
from edgekit.data import Splits
from edgekit.latency import Latency
from edgekit.metrics import Metric, stack_outputs
from edgekit.plan import PrecisionPlan
from edgekit.precision.timing import Timing
from edgekit.profile import time_interleaved

LINEAR_STEPS = 4  # one layer back to float per step at first, then twice as many each step
FOLDER = "accuracy-aware"


@dataclass(frozen=True)
class Descent:
    plan: PrecisionPlan
    qdq_path: Path | None  # the shipped plan's Q/DQ model (None: float ships)
    record: dict  # report.json's precision.accuracy_aware


@dataclass(frozen=True)
class Goal:
    """What every step is judged on: `metric` on the validation split of `splits`, against the source model's
    outputs (`reference(feed)`), at most `max_drop` points below them."""

    splits: Splits
    metric: Metric
    max_drop: float
    reference: Callable


def _gain(analysis: dict, name: str) -> float:
    return (analysis["layers"][name].get("latency") or {}).get("gain_ms") or 0.0


def _order(analysis: dict, layers: list[str]) -> list[str]:
    """Layers from the worst harm per millisecond gained to the best (harm in metric points, or top-1
    points, or the output error, whichever the analysis has; a layer that gains nothing comes first)."""
    def badness(name: str) -> float:
        record = analysis["layers"][name]
        acc, gain = record.get("accuracy") or {}, _gain(analysis, name)
        harm = acc.get("metric_drop")
        if harm is None:
            harm = acc.get("top1_loss_pt") if acc.get("top1_loss_pt") is not None else 100 * acc.get("output_error", 0.0)
        harm = max(float(harm), 0.0) + 1e-9
        return harm / gain if gain > 0 else 1e12 * harm
    return sorted(layers, key=badness, reverse=True)


def descend(*, analysis: dict, calibration: CalibrationResult, onnx_path: Path, run_dir: Path, timing: Timing,
            goal: Goal) -> Descent:
    """Walk from all-int8 towards float until the metric is within `goal.max_drop` points; ship the fastest
    point within it (see the module's docstring)."""
    target, backend, threads = timing.target, timing.backend, timing.threads
    splits, metric, max_drop = goal.splits, goal.metric, goal.max_drop
    float_p = analysis["float_precision"]
    order = _order(analysis, [name for name, p in calibration.planned.items() if p == "int8"])
    current = list(order)
    feeds = [splits.validation.sample(i) for i in range(len(splits.validation))]
    labels = splits.validation.labels
    source_outputs = stack_outputs([goal.reference(f) for f in feeds])
    source = metric(source_outputs, labels, source_outputs)
    folder = Path(run_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    points: list[dict] = []
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=f".{float_p}-") as tmp:
        floating = backend.build(onnx_path=onnx_path, plan=PrecisionPlan(float_p), target=target, out_dir=Path(tmp))
        float_engine = backend.load(floating, target=target, threads=threads)
        step = 0
        while True:
            qdq_path = folder / f"step-{step}.int8.onnx"
            calibration.rewrite(current, qdq_path)
            plan = PrecisionPlan(float_p, {name: "int8" if name in current else float_p for name in calibration.planned})
            built: Artifact = backend.build(onnx_path=qdq_path, plan=plan, target=target, out_dir=folder / f"step-{step}")
            engine = backend.load(built, target=target, threads=threads)
            value = metric(stack_outputs([[np.asarray(o) for o in engine.run(f)] for f in feeds]), labels, source_outputs)
            times = time_interleaved({"int8": engine, float_p: float_engine}, timing.feed, timing.settings)
            p50 = {name: Latency.from_samples(t, "side by side").p50 for name, t in times.items()}
            before = len(order) - (points[-1]["int8_layers"] if points else len(order))
            points.append({"step": step, "int8_layers": len(current), "metric": value,
                           "drop": round(metric.drop(source, value), 6), "p50_ms": p50["int8"],
                           "float_p50_ms": p50[float_p], "ratio": p50["int8"] / p50[float_p],
                           "returned_to_float": order[before:len(order) - len(current)]})
            if not current:
                break
            if points[-1]["drop"] <= max_drop:
                # within the drop: go on only while int8 is no faster, returning to float at once every
                # layer int8 slows down (measured) that comes next
                if points[-1]["ratio"] < 1 or _gain(analysis, current[0]) > 0:
                    break
                count = next((i for i, name in enumerate(current) if _gain(analysis, name) > 0), len(current))
            else:
                count = 1 if step < LINEAR_STEPS else 2 ** (step - LINEAR_STEPS + 1)
            current = current[count:]
            step += 1
    within = [p for p in points if p["drop"] <= max_drop and p["ratio"] < 1]
    record = {"max_drop_points": max_drop, "metric": metric.describe(), "source_metric": source, "split": "validation",
              "measured": f"metric with each step's {backend.name} engine; latency side by side with {float_p} on {target.name}",
              "path": points}
    if not within:
        record.update(shipped=None, reason=(f"no int8 plan within {max_drop} points is faster than {float_p}: "
                                            f"{float_p} ships"))
        return Descent(PrecisionPlan(float_p, {n: float_p for n in calibration.planned}), None, record)
    best = min(within, key=lambda p: p["ratio"])
    keep = order[len(order) - best["int8_layers"]:] if best["int8_layers"] else []
    shipped = PrecisionPlan(float_p, {name: "int8" if name in keep else float_p for name in calibration.planned})
    record.update(shipped=best["step"], reason=(f"step {best['step']}: {best['int8_layers']} int8 layers, {metric.name} "
                                                f"{best['drop']:.3g} points below the source (≤ {max_drop}), "
                                                f"{best['ratio']:.3f}× {float_p}'s p50, the fastest point within the drop"))
    calibration.rewrite(keep, calibration.qdq_path)
    return Descent(shipped, calibration.qdq_path, record)
