"""Building a chosen candidate as it will ship: distilled longer, exported, shrunk to the flash budget
where there is one, then deployed like any model (calibrated, built with the real backend, and measured
on the device, or predicted where the device is not here)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import graph
from edgekit.backends.base import get_backend
from edgekit.budget import judge
from edgekit.calibrate.run import CalibrationOptions
from edgekit.compress.distill import DistillSettings, distill
from edgekit.compress.shrink import ShrinkResult, shrink_to_flash, stored_size
from edgekit.deploy import DeployReport, DeployRequest, deploy
from edgekit.errors import MissingRuntime
from edgekit.plan import PrecisionPlan
from edgekit.search.context import BUILD_RESERVE_S, Original, SearchContext, validation_accuracy
from edgekit.search.pricing import Pricing


@dataclass(frozen=True)
class ClosedLoop:
    """What building, measuring and judging a round all read: the search's context, the original model,
    the candidates' pricing and the latency budget (ms, on the anchor's scale)."""

    ctx: SearchContext
    original: Original
    pricing: Pricing
    budget_ms: float


@dataclass
class Built:
    report: DeployReport
    onnx_path: Path
    precisions: dict[str, str]  # by the built ONNX's layer names
    validation: float  # accuracy of the distilled model on the validation split (fp32 weights)
    module: object = None  # the distilled module that was built
    folder: Path | None = None


def build_candidate(loop: ClosedLoop, state, folder: Path, finetuned=None, *, shrink: bool = True) -> Built:
    """Distil the chosen candidate longer (final_seconds; unless `finetuned` is given: that module is built
    as it is), then deploy it like any model: export, calibrate its plan, build with the real backend,
    measure on the device (or predict where the device is not here). `shrink=False`: not down to the flash
    budget (a build that only times the graph, built again before it ships)."""
    ctx, request, loaded = loop.ctx, loop.ctx.request, loop.ctx.loaded
    candidate = state.candidate
    module = copy.deepcopy(finetuned if finetuned is not None else state.module)
    # unpruned, the original weights are the best; --finetune 0 asks for none
    if finetuned is None and candidate.pruned and (seconds := final_seconds(ctx)) > 0:
        ctx.progress(f"distilling the chosen candidate ({seconds:.0f} s at most)")
        settings = DistillSettings(seed=0, objective=loop.original.objective)
        distill(module, ctx.teacher, final_inputs(ctx.splits), dataclasses.replace(
            settings, seconds=seconds, epochs=max(1, round(settings.epochs * seconds / request.final_finetune_s))))
    pruned = dataclasses.replace(loaded, module=module.eval(), spec=f"{loaded.spec}#{candidate.key()}")
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = graph.export_onnx(pruned, folder / "model.onnx")
    precisions = loop.pricing.built_precisions(candidate, module, graph.layer_table(onnx_path))
    plan = PrecisionPlan(candidate.default_precision, precisions)
    flash = None
    if request.flash_budget_mb is not None and shrink:
        flash = _shrink(ctx, pruned, plan, folder)
        module = flash.module
        pruned = dataclasses.replace(pruned, module=module.eval(), spec=f"{pruned.spec}#{flash.action.as_dict()}")
        onnx_path = graph.export_onnx(pruned, folder / "model.onnx")
    target, anchor = ctx.target, loop.original.anchor
    on_device = ctx.measurer.reaches(target)
    ctx.progress("building and measuring the candidate on the device" if on_device else "building the candidate")
    deploy_request = DeployRequest(target=request.target, out=folder, backend=request.backend,
                                   latency_budget_ms=loop.budget_ms, measure=on_device or _checkable(request, target),
                                   calibration=request.calibration, settings=request.settings, metric=request.metric,
                                   targets_dir=request.targets_dir, device=request.device, devices_file=request.devices_file)
    report = deploy(deploy_request, model=pruned, samples=ctx.samples, plan=plan,  # deploy splits it the same way
                    beside=anchor.beside() if anchor else None, original=loaded)
    if flash is not None:
        report = dataclasses.replace(report, flash=_flash_record(flash, shipped_files(report, folder), request.flash_budget_mb))
    return Built(report, onnx_path, precisions, validation_accuracy(ctx, loop.original, module), module, folder)


def _checkable(request, target) -> bool:
    """Off the device, whether this machine runs the built model's arithmetic (LiteRT, hls4ml's C
    simulation, the Q/DQ ONNX in ONNX Runtime): deploy then reports its test accuracy."""
    try:
        return get_backend(request.backend or target.backend.name).available(target).check
    except MissingRuntime:
        return False


LONGER = 3.0  # the chosen candidate's distillation: --finetune, and up to this many times it where time is left


def final_seconds(ctx: SearchContext) -> float:
    """How long the chosen candidate is distilled: --finetune seconds, or as long as the time limit still
    allows after its build, up to LONGER times that (its epoch cap grows alike). A few hundred samples keep
    paying for it: the 96x96 MobileNetV2-like with every group's channels halved reached 97.0 % test after
    60 s (30 epochs) and 97.8 % after 150 s (98.8 % unpruned)."""
    request = ctx.request
    left = ctx.deadline - time.monotonic() - BUILD_RESERVE_S
    return min(max(request.final_finetune_s, left), LONGER * request.final_finetune_s)


def final_inputs(splits) -> dict:
    """What the chosen candidate is distilled on: the calibration and validation inputs, unlabelled (the
    teacher labels them). Once the candidate is chosen the validation split has done its job, and with a
    few hundred samples the amount of data decides how well the distilled model generalises (ResNet-like
    on digits, pruned to half: test 96.0 % distilled on the calibration split alone, 98.5 % on both, as
    the original). The test split stays unseen; the reported validation accuracy is then no longer held out."""
    calibration, validation = splits.calibration.inputs, splits.validation.inputs
    return {name: np.concatenate([calibration[name], validation[name]]) for name in calibration}


def shipped_files(report: DeployReport, folder: Path) -> list[Path]:
    """The files a bundle ships: the engine's, or the ONNX handed to the vendor's tool where nothing was built here."""
    files = [folder / name for name in report.artifacts.get("engine_files", [])]
    return files or [folder / report.artifacts.get("qdq_onnx", "model.onnx")]


def _shrink(ctx: SearchContext, pruned, plan: PrecisionPlan, folder: Path) -> ShrinkResult:
    """Sparsity and weight sharing until the shipped files, built as they will ship (the candidate's
    plan, calibrated), fit `--flash-budget-mb` compressed: each rung of the ladder built and measured."""
    request = ctx.request
    tries = itertools.count(1)

    def export(module) -> list[Path]:
        sub = folder / "flash" / f"try-{next(tries)}"
        model = dataclasses.replace(pruned, module=module.eval(), spec=f"{pruned.spec}#flash")
        report = deploy(DeployRequest(target=request.target, out=sub, backend=request.backend, measure=False,
                                      calibration=CalibrationOptions(method="mse", equalization="off"),
                                      targets_dir=request.targets_dir), model=model, samples=ctx.samples, plan=plan)
        return shipped_files(report, sub)

    ctx.progress(f"shrinking the stored model to {request.flash_budget_mb} MB (sparsity, then weight sharing)")
    return shrink_to_flash(pruned.module, ctx.teacher, ctx.splits.calibration.inputs, export, request.flash_budget_mb,
                           training=DistillSettings(seconds=request.final_finetune_s))


def _flash_record(flash: ShrinkResult, files: list[Path], budget_mb: float) -> dict:
    """report.json's flash: the shipped files' size as measured, and the ladder's rungs tried."""
    size = stored_size(files)
    return {"budget_mb": budget_mb, "compressed_mb": round(size.compressed_mb, 6),
            "raw_mb": round(size.raw_mb, 6), "met": judge("flash_mb", budget_mb, size.compressed_mb, "measured").met,
            "kind": "measured", "how": "the shipped engine's files, each xz-compressed",
            "action": flash.action.as_dict(), "ladder": [
                {**step.action.as_dict(), "compressed_mb": round(step.compressed_mb, 6), "met": step.met}
                for step in flash.steps]}
