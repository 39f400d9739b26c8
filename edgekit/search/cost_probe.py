"""Teaching the cost model this model on this device before the walk relies on it."""

from __future__ import annotations

import dataclasses
import json

from edgekit import graph
from edgekit.calibrate.run import CalibrationOptions
from edgekit.compress.prune import prune
from edgekit.deploy import DeployRequest, deploy
from edgekit.plan import PrecisionPlan
from edgekit.precision import sensitivity
from edgekit.search import evaluate
from edgekit.search.context import Original, SearchContext
from edgekit.search.pricing import Pricing
from edgekit.search.space import example_tensors


def calibrate_cost(ctx: SearchContext, original: Original, plan: PrecisionPlan, pricing: Pricing) -> None:
    """Teach the cost model from the whole-model fp32 and all-int8 latencies the sensitivity analysis
    measured side by side, and from one build of the model pruned to half, measured (three whole-model
    points fit the calibration; the closed loop adds more). Every point is on the anchor's scale, the one
    the budget is judged on."""
    anchor, model_cost, loaded, teacher = original.anchor, pricing.model_cost, ctx.loaded, ctx.teacher
    saved = ctx.run_dir / "sensitivity" / sensitivity.FILE
    layers = evaluate.fast_layer_table(teacher, loaded)
    if saved.exists():
        measured = json.loads(saved.read_text()).get("latency", {})
        if measured.get("kind") == "measured" and measured.get("fp32", {}).get("p50"):
            quantizable = [layer.name for layer in evaluate.quantizable(layers)]
            scale = anchor.p50_ms / measured["fp32"]["p50"] if anchor else 1.0  # int8 / fp32 as timed side by side
            for precision in ("fp32", "int8"):
                if measured.get(precision, {}).get("p50"):
                    model_cost.observe(layers, {name: precision for name in quantizable}, measured[precision]["p50"] * scale,
                                       candidate=f"original-{precision}")
    half = original.space.uniform(0.5, plan.default)
    if not half.keep:
        return
    ctx.progress("measuring the model pruned to half, to calibrate the cost model on this device")
    module = prune(teacher, example_tensors(loaded), dict(half.keep))
    candidate = dataclasses.replace(half, precision=dict(plan.layers))
    pruned = dataclasses.replace(loaded, module=module, spec=f"{loaded.spec}#{candidate.key()}")
    folder = ctx.run_dir / "cost-probe"
    folder.mkdir(exist_ok=True)
    onnx_path = graph.export_onnx(pruned, folder / "model.onnx")
    names = evaluate.rename_by_order(original.layers, graph.layer_table(onnx_path))
    probe_plan = PrecisionPlan(plan.default, {ours: plan.precision_of(theirs) for ours, theirs in names.items()})
    request = ctx.request
    report = deploy(DeployRequest(target=request.target, out=folder, backend=request.backend, targets_dir=request.targets_dir,
                                  calibration=CalibrationOptions(method="mse", equalization="off"), settings=request.settings,
                                  device=request.device, devices_file=request.devices_file),
                    model=pruned, samples=ctx.samples, plan=probe_plan, beside=anchor.beside() if anchor else None)
    measured = anchor.judge(report) if anchor else None
    if measured:
        fast = evaluate.fast_layer_table(module, loaded)
        model_cost.observe(fast, pricing.precisions_of(candidate, fast), measured.ms, default=plan.default,
                           candidate=candidate.key())
