"""The pipeline behind `edgekit deploy`: `build` (load → export → calibrate → choose precision → build)
then `measure` (profile where the `Measurer` times → check → judge the budget → report), one way.

It never branches on a runtime's name: the target names its backend, the backend says whether it is
available here, and a target that cannot be measured gets a predicted latency, labelled so. Where it is
measured (here, or on a device of the inventory through its agent) is the Measurer's one decision.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgekit import graph, metrics, recipes
from edgekit.backends.base import Artifact, calibration_runtime
from edgekit.backends.tensorrt_dla import with_dla
from edgekit.calibrate.run import calibrate
from edgekit.data import Samples
from edgekit.deploy.build import EXPORT_CHECK_SAMPLES, Build, build, calibration_summary
from edgekit.deploy.measure import measure
from edgekit.deploy.request import (
    DeployRequest,
    choose_plan,
    choose_precision,
    load_plan,
    run_dir_for,
    searchable,
    searches_first,
)
from edgekit.deploy.result import DeployReport
from edgekit.measurer import LOCAL, measurer_for
from edgekit.models import LoadedModel, load_model
from edgekit.plan import PrecisionPlan
from edgekit.precision import sensitivity
from edgekit.targets import load_target

__all__ = ["Build", "DeployReport", "DeployRequest", "build", "calibration_summary", "choose_plan", "choose_precision", "deploy",
           "inspect_sensitivity", "load_plan", "measure", "searchable",
           "searches_first"]


def deploy(request: DeployRequest, step: Callable[[str], None] = lambda _: None, *,
           model: LoadedModel | None = None, samples: Samples | None = None, plan: PrecisionPlan | None = None,
           beside: tuple[str, Artifact] | None = None, original: LoadedModel | None = None) -> DeployReport:
    """`build` then `measure`; the report (written as report.json, beside the rest in its run directory). The search
    passes its candidate (model, samples, plan) and what to time and judge it against (`measure`)."""
    step("target")
    request = recipes.with_recipe(request)
    target = load_target(request.target, list(request.targets_dir))
    if request.dla is not None:
        target = with_dla(target, request.dla)
    measurer = measurer_for(request.device, target, request.devices_file, list(request.targets_dir))
    built = build(request, target, measurer, step, model=model, samples=samples, plan=plan)
    return measure(built, measurer, step, beside=beside, original=original)


def inspect_sensitivity(request: DeployRequest, step: Callable[[str], None] = lambda _: None) -> tuple[dict, Path]:
    """`edgekit inspect --sensitivity`: export, calibrate every layer int8 on the calibration split,
    analyse each layer (`edgekit.precision.sensitivity`); sensitivity.json's content and its path."""
    step("target")
    request = recipes.with_recipe(request)
    target = load_target(request.target, list(request.targets_dir))
    sensitivity.check_target(target)
    step("model")
    model = load_model(request.model, list(request.input_shapes))
    samples = recipes.model_samples(model, request.data, request.recipe, missing=(
        f"--sensitivity needs data for {request.model}: pass --data (a few hundred real inputs; the calibration split "
        "sets the scales, the validation split measures each layer's accuracy)"))
    splits = recipes.recipe_split(request.recipe, samples)
    metric = metrics.task_metric(request.metric, model, splits)
    run_dir = run_dir_for(request, model, target)
    step("export")
    onnx_path = graph.export_onnx(model, run_dir / "model.onnx")
    graph.check_export(model, onnx_path, [splits.calibration.sample(i) for i in range(min(EXPORT_CHECK_SAMPLES, len(splits.calibration)))])
    step("calibrate")
    calibration = calibrate(onnx_path, splits.calibration, target, PrecisionPlan("int8"), run_dir, request.calibration,
                            metric=metric, runtime=calibration_runtime(target))
    step("sensitivity")
    how = sensitivity.HowToAnalyse(options=request.calibration, threads=request.settings.threads, backend_name=request.backend,
                                   settings=request.settings, measurer=LOCAL, metric=metric)
    result = sensitivity.analyse(onnx_path, splits, target, run_dir, calibration=calibration, how=how)
    return result, run_dir / sensitivity.FILE
