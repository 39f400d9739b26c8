"""Where the walk starts: each layer's precision before anything is pruned, and what the walk's
precision moves are estimated to cost in accuracy."""

from __future__ import annotations

import json
from dataclasses import dataclass

from edgekit.backends.base import calibration_runtime
from edgekit.calibrate.run import calibrate
from edgekit.plan import PrecisionPlan
from edgekit.precision import sensitivity
from edgekit.search import fixed_point
from edgekit.search.context import Original, SearchContext
from edgekit.util import write_json


@dataclass(frozen=True)
class StartPlan:
    """The starting precisions, what they were chosen from, and the precision moves' estimated prices."""

    plan: PrecisionPlan
    analysis: dict | None  # the sensitivity analysis behind it (fixed point: the width sensitivity)
    design: fixed_point.DesignCost | None  # fixed point: edgekit's estimate of the hls4ml design; else None
    costly: dict[str, float]  # layers int8 would speed up at an accuracy cost, and that cost (_int8_costs)


def start_plan(ctx: SearchContext, original: Original) -> StartPlan:
    """The precision plan: int8 where the sensitivity analysis finds it harmless and faster, or, on a
    fixed-point target, the widest width whose design fits."""
    fixed = fixed_point.is_fixed_point(ctx.target)
    design = fixed_point.DesignCost(ctx.target, ctx.loaded, ctx.splits.calibration.inputs) if fixed else None
    if design is not None:
        plan, analysis = _width_plan(ctx, original, design)
    else:
        plan, analysis = _precision_plan(ctx, original)
    costly = _int8_costs(analysis, plan) if not fixed else {}
    return StartPlan(plan, analysis, design, costly)


def _int8_costs(analysis: dict | None, plan: PrecisionPlan) -> dict[str, float]:
    """Layers kept float only because int8 costs them accuracy (it is faster), with that cost as a
    fraction of validation accuracy: the search's precision moves and their estimated price."""
    costs = {}
    for name, record in ((analysis or {}).get("layers") or {}).items():
        accuracy, latency = record.get("accuracy") or {}, record.get("latency") or {}
        if record.get("verdict") != "harmful" or plan.precision_of(name) == "int8" or not (latency.get("gain_ms") or 0) > 0:
            continue
        loss = accuracy.get("metric_drop") if accuracy.get("metric_drop") is not None else accuracy.get("top1_loss_pt")
        if loss is None and accuracy.get("agreement") is not None:
            loss = 100 * (1 - accuracy["agreement"])
        if loss is not None:
            costs[name] = max(float(loss), 0.0) / 100
    return costs


def _width_plan(ctx: SearchContext, original: Original, design) -> tuple[PrecisionPlan, dict]:
    """A fixed-point target starts from the widest width at which the whole model fits the part (the most
    accurate design there is); the walk narrows layers, priced by each layer's width sensitivity, and
    prunes. Saved in the run directory, reused on resume."""
    saved = ctx.run_dir / "width_sensitivity.json"
    if saved.exists():
        analysis = json.loads(saved.read_text())
    else:
        ctx.progress("simulating each layer in each narrower width (fixed point, in PyTorch)")
        teacher, splits = ctx.teacher, ctx.splits
        analysis = fixed_point.sensitivity(teacher, ctx.loaded, splits.calibration.inputs, splits.validation,
                                           list(original.space.layers), ctx.target, original.validation_ref)
        analysis["start"] = fixed_point.widest_fitting(design, teacher, len(original.space.layers))
        write_json(saved, analysis)
    ctx.progress(f"starting from {analysis['start']} everywhere: the widest width whose design fits {ctx.target.name}")
    return PrecisionPlan(analysis["start"]), analysis


def _precision_plan(ctx: SearchContext, original: Original) -> tuple[PrecisionPlan, dict | None]:
    """int8 for the layers the sensitivity analysis finds harmless and faster on the target (saved in
    sensitivity/, reused on resume); the target's float precision elsewhere. Also the analysis."""
    request, target, metric = ctx.request, ctx.target, original.metric
    if "int8" not in target.precisions.supported:
        return PrecisionPlan(sensitivity.float_precision(target)), None
    folder = ctx.run_dir / "sensitivity"
    saved = folder / sensitivity.FILE
    if saved.exists():
        analysis = sensitivity.load_sensitivity(saved, original.onnx_path)
        return sensitivity.mixed_plan(analysis), analysis
    ctx.progress("measuring each layer's int8 sensitivity on the target")
    calibration = calibrate(original.onnx_path, ctx.splits.calibration, target, PrecisionPlan("int8"), folder,
                            request.calibration, metric=metric, runtime=calibration_runtime(target))
    how = sensitivity.HowToAnalyse(options=request.calibration, threads=request.settings.threads, backend_name=ctx.backend_name,
                                   settings=request.settings, measurer=ctx.measurer, metric=metric)
    analysis = sensitivity.analyse(original.onnx_path, ctx.splits, target, folder, calibration=calibration, how=how)
    return sensitivity.mixed_plan(analysis), analysis
