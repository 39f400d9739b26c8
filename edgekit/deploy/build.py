"""`build`: the first half of a deploy — target, model, export, calibration, the precision choice and the
backend's build — and report.json so far. Nothing here times the shipped engine: `measure` does.

The precision choice itself may time (the sensitivity analysis, mixed's check against all-int8): it is a
decision made on measurements, the engine it leads to is what is then measured."""

from __future__ import annotations

import datetime as dt
import functools
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from edgekit import anchored, cost, graph, metrics, recipes
from edgekit.backends.base import (
    Artifact,
    Availability,
    Backend,
    BuildContext,
    calibration_runtime,
    get_backend,
)
from edgekit.calibrate.qdq import quantizable_layers
from edgekit.calibrate.run import CalibrationResult, calibrate
from edgekit.data import Samples, Splits
from edgekit.deploy.request import DeployRequest, choose_plan, run_dir_for
from edgekit.deploy.result import DeployReport
from edgekit.errors import BadInput, MissingRuntime
from edgekit.measurer import LOCAL, Measurer
from edgekit.metrics import Metric
from edgekit.models import LoadedModel, load_model
from edgekit.plan import PrecisionPlan
from edgekit.precision import accuracy_aware, sensitivity
from edgekit.precision import mixed as mixed_step
from edgekit.precision.layer_latency import predicted_latency
from edgekit.precision.mixed import MIXED, MixedChoice
from edgekit.precision.timing import Timing
from edgekit.report import versions as installed_versions
from edgekit.report import write_reports
from edgekit.targets import Target
from edgekit.util import write_json

EXPORT_CHECK_SAMPLES = 8


@dataclass
class Build:
    """What a deploy built, filled in by `build`'s steps and read by `measure`: the engine (`artifact`;
    None where only the calibration files could be made here) and report.json's parts so far."""

    request: DeployRequest
    target: Target
    model: LoadedModel
    splits: Splits | None
    metric: Metric | None
    run_dir: Path
    onnx_path: Path  # the float export
    layers: list[graph.Layer]
    plan: PrecisionPlan
    summary: dict  # report.json's model: what it is, its size, how its export checked out
    data: dict | None  # report.json's data: where the samples came from, the splits, warnings
    predicted: dict  # the cost model's latency of the plan shipped
    latency: dict  # the latency as known before a measurement: predicted (by the cost model or the backend)
    memory: dict  # the cost model's memory for the precision asked
    artifacts: dict = field(default_factory=lambda: {"onnx": "model.onnx", "layers": "layers.json", "target": "target.yaml"})
    versions: dict = field(default_factory=installed_versions)
    precision: dict = field(default_factory=dict)  # asked, label, planned (and accuracy_aware's record)
    status: str = "incomplete"
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    calibration: dict | None = None
    notes: dict | None = None  # the backend's notes on its build, and the step left to the vendor's tool
    mixed: MixedChoice | None = None
    build_from: Path | None = None  # what the backend built from: the float export, or its Q/DQ model
    backend: Backend | None = None
    availability: Availability | None = None
    artifact: Artifact | None = None
    times: list[float] | None = None  # the engine's times side by side with all-int8 (`mixed.never_slower`)

    @property
    def backend_name(self) -> str:
        return self.request.backend or self.target.backend.name

    @property
    def feed(self) -> dict:
        return self.splits.test.sample(0) if self.splits else self.model.example

    @property
    def threads(self) -> int:
        return self.request.settings.threads or self.target.cores

    def report(self, **measured) -> DeployReport:
        """report.json as it stands: what was built, and `measured` (DeployReport's measurement fields)."""
        target = self.target
        budget = {"latency_ms": self.request.latency_budget_ms} if self.request.latency_budget_ms is not None else None
        return DeployReport(**{
            "edgekit": self.versions.get("edgekit"), "created": self.created, "status": self.status,
            "target": {"name": target.name, "device": target.device, "vendor": target.vendor, "file": Path(target.file).name},
            "backend": self.backend_name, "precision": self.precision, "model": self.summary, "data": self.data,
            "metric": self.metric.describe() if self.metric else None, "latency_ms": self.latency,
            "predicted_latency_ms": self.predicted, "predicted_memory_mb": self.memory,
            "artifacts": self.artifacts, "versions": self.versions, "run_dir": self.run_dir, "budget": budget,
            "calibration": self.calibration, "build": self.notes, "mixed": self.mixed, **measured})

    def finish(self, report: DeployReport | None = None) -> DeployReport:
        """Write report.json and report.html (the report as it stands unless given); the report."""
        report = report or self.report()
        write_reports(self.run_dir, report.as_dict())
        return report


def build(request: DeployRequest, target: Target, measurer: Measurer, step: Callable[[str], None] = lambda _: None, *,
          model: LoadedModel | None = None, samples: Samples | None = None, plan: PrecisionPlan | None = None) -> Build:
    """Export, calibrate, choose each layer's precision and build the engine; `measurer` times what the
    precision choice needs. The search passes its candidate: a loaded (pruned) model, its data and plan."""
    plan = plan or choose_plan(request, target)
    step("model")
    model = model or load_model(request.model, list(request.input_shapes))
    samples = samples if samples is not None else recipes.model_samples(model, request.data, request.recipe)
    splits = recipes.recipe_split(request.recipe, samples) if samples is not None else None
    run_dir = run_dir_for(request, model, target)
    shutil.copyfile(target.file, run_dir / "target.yaml")
    step("export")
    onnx_path = graph.export_onnx(model, run_dir / "model.onnx")
    feeds = ([splits.calibration.sample(i) for i in range(min(EXPORT_CHECK_SAMPLES, len(splits.calibration)))]
             if splits else [model.example])
    check = graph.check_export(model, onnx_path, feeds)
    layers = graph.layer_table(onnx_path)
    write_json(run_dir / "layers.json", graph.table_as_dicts(layers))
    precision = plan.float_precision if not plan.quantized else "int8"
    predicted = anchored.predict(layers, target, precision).as_dict()
    built = Build(request, target, model, splits, metrics.task_metric(request.metric, model, splits), run_dir, onnx_path,
                  layers, plan, _model_summary(model, layers, check), _data_summary(samples, splits), predicted=predicted,
                  latency=predicted, memory=cost.predict_memory_mb(layers, precision), build_from=onnx_path,
                  precision={"asked": MIXED if request.precision == MIXED else plan.as_dict(), "label": plan.label})
    _choose_precision(built, measurer, step)
    step("build")
    _build_engine(built)
    return built


def _model_summary(model: LoadedModel, layers: list[graph.Layer], check: graph.ExportCheck) -> dict:
    return {"name": model.name, "spec": model.spec, "kind": model.kind, "sha256": model.sha256,
            "inputs": [str(s) for s in model.inputs], "totals": graph.totals(layers), "export_check": check.__dict__,
            **({"normalized": model.normalization} if model.normalization else {})}


def _data_summary(samples: Samples | None, splits: Splits | None) -> dict | None:
    return None if splits is None else {
        "source": samples.source, "sha256": samples.sha256(),
        "splits": {k: len(getattr(splits, k)) for k in ("calibration", "validation", "test")},
        "warnings": list(samples.warnings)}


def _choose_precision(built: Build, measurer: Measurer, step: Callable[[str], None]) -> None:
    """int8: calibrate; then, if asked, the sensitivity analysis keeps layers in float (mixed) or walks
    towards float until the accuracy drop is met (accuracy-aware). The plan and what to build from."""
    request, splits = built.request, built.splits
    planned = {layer: built.plan.precision_of(layer) for layer in _quantizable(built.onnx_path)}
    if built.plan.quantized:
        step("calibrate")
        if splits is None:
            built.finish()
            raise BadInput("int8 needs calibration data: pass --data (a few hundred samples of real inputs)")
        calibration = calibrate(built.onnx_path, splits.calibration, built.target, built.plan, built.run_dir,
                                request.calibration, metric=built.metric, runtime=calibration_runtime(built.target))
        built.calibration = calibration_summary(calibration)
        built.artifacts.update(calibration.files)
        planned = calibration.planned
        built.plan, built.build_from = PrecisionPlan(default=built.plan.default, layers=planned), calibration.qdq_path
        if request.max_accuracy_drop is not None or request.precision == MIXED:
            if request.max_accuracy_drop is not None:
                _check_accuracy_aware(built, measurer)
            step("sensitivity")
            analysis = sensitivity.analyse(built.onnx_path, splits, built.target, built.run_dir, calibration=calibration,
                                           how=_how(request, built.backend_name, built.metric, measurer))
            built.artifacts["sensitivity"] = sensitivity.FILE
            if request.max_accuracy_drop is not None:
                step("accuracy-aware int8")
                built.plan, built.build_from = _accuracy_aware(built, analysis, calibration)
            else:
                built.plan, built.build_from, built.mixed = mixed_step.plan_from_analysis(
                    analysis, calibration, built.onnx_path, built.run_dir, built.layers, built.target)
            _predict_shipped(built)
            planned = dict(built.plan.layers)
    built.precision.update({"label": built.plan.label, "planned": planned})


def _predict_shipped(built: Build) -> None:
    """The plan shipped, predicted per layer (until a measurement replaces it)."""
    built.predicted = built.latency = predicted_latency(built.layers, built.target, built.plan).as_dict()


def _how(request: DeployRequest, backend_name: str | None, metric: Metric | None, measurer: Measurer) -> sensitivity.HowToAnalyse:
    return sensitivity.HowToAnalyse(options=request.calibration, threads=request.settings.threads, backend_name=backend_name,
                                    settings=request.settings, measurer=measurer, metric=metric)


def _check_accuracy_aware(built: Build, measurer: Measurer) -> None:
    """Accuracy-aware int8 builds and times every step on this machine: say so before the analysis if it cannot."""
    availability = get_backend(built.backend_name).available(built.target)
    if measurer != LOCAL or not LOCAL.can_analyse(built.target, availability):
        raise BadInput(f"accuracy-aware int8 builds and times every step: {built.target.name} is not measured on this "
                       f"machine ({availability.reason or 'the device is not this machine'}); use --precision mixed or "
                       "int8 without --max-accuracy-drop")


def _accuracy_aware(built: Build, analysis: dict, calibration: CalibrationResult) -> tuple[PrecisionPlan, Path]:
    """The fastest plan within --max-accuracy-drop, every step built and timed here (edgekit.precision.accuracy_aware)."""
    target, backend, settings = built.target, get_backend(built.backend_name), built.request.settings
    descent = accuracy_aware.descend(
        analysis=analysis, calibration=calibration, onnx_path=built.onnx_path, run_dir=built.run_dir,
        timing=Timing(target=target, backend=backend, threads=built.threads, feed=built.splits.test.sample(0), settings=settings),
        goal=accuracy_aware.Goal(splits=built.splits, metric=built.metric, max_drop=built.request.max_accuracy_drop,
                                 reference=functools.partial(graph.reference_outputs, built.model)))
    built.precision["accuracy_aware"] = descent.record
    built.artifacts["accuracy_aware"] = accuracy_aware.FOLDER
    return descent.plan, descent.qdq_path or built.onnx_path


def _build_engine(built: Build) -> None:
    """The backend builds the engine; a mixed plan measured here is kept only if no slower than all-int8."""
    request, target = built.request, built.target
    try:
        built.backend = get_backend(built.backend_name)
    except MissingRuntime as err:
        if not request.measure:  # calibrating for a device whose runtime is not here: the files are the product
            built.status = f"calibrated; build the engine on the device ({err})"
            return
        built.finish()
        raise MissingRuntime(f"target {target.name} needs the {built.backend_name} backend: {err}; produced "
                             f"{built.run_dir / 'model.onnx'} and {built.run_dir / 'report.json'} (latency predicted)") from err
    built.availability = availability = built.backend.available(target)
    built.versions.update(availability.versions)
    if not availability.build:
        built.finish()
        raise MissingRuntime(f"target {target.name}: {availability.reason}; produced {built.run_dir / 'model.onnx'} "
                             f"and {built.run_dir / 'report.json'} (latency predicted)")
    scales = built.run_dir / built.artifacts["scales"] if "scales" in built.artifacts else None
    context = BuildContext(model=built.model, float_onnx=built.onnx_path,
                           calibration=built.splits.calibration if built.splits else None, scales=scales)
    built.artifact = built.backend.build(onnx_path=built.build_from, plan=built.plan, target=target, out_dir=built.run_dir,
                                         context=context)
    choice = built.mixed
    if choice and choice.chosen == MIXED and choice.kind == "measured" and LOCAL.can_time(target, availability):
        timing = Timing(target=target, backend=built.backend, threads=built.threads, feed=built.feed, settings=request.settings)
        built.plan, built.artifact, built.times, built.mixed = mixed_step.never_slower(
            timing, built.artifact, built.plan, built.onnx_path, built.run_dir, choice)
        built.precision.update({"label": built.plan.label, "planned": dict(built.plan.layers)})
        _predict_shipped(built)
    _record_engine(built)


def _record_engine(built: Build) -> None:
    """The engine's files in the report, and what the build says about the latency until it is measured."""
    artifact, availability, run_dir = built.artifact, built.availability, built.run_dir
    built.artifacts["engine"] = artifact.path.name
    built.artifacts["engine_files"] = [str(f.relative_to(run_dir)) if f.is_relative_to(run_dir) else f.name
                                       for f in artifact.files]
    if artifact.notes or artifact.pending:
        built.notes = {**artifact.notes, "pending": artifact.pending}
    here = built.target.local and availability.run
    if artifact.notes.get("predicted_latency_ms") and not here:
        built.latency = artifact.notes["predicted_latency_ms"]  # the backend's own model of its engine
    why = availability.reason or "the device is not this machine"
    built.status = (f"built; latency predicted ({why})" if built.request.measure
                    else "built; not measured (edgekit deploy measures it)")
    if artifact.pending:
        built.status = f"built up to the engine, which is built where its tool is: {artifact.pending}; latency predicted ({why})"


def _quantizable(onnx_path: Path) -> list[str]:
    return list(quantizable_layers(onnx.load(str(onnx_path), load_external_data=False)))


def calibration_summary(result: CalibrationResult) -> dict:
    return {"method": result.method, "selection": result.selection,
            "samples": result.samples, "seconds": round(result.seconds, 2),
            "int8_layers": len(result.int8_layers), "demoted": result.demoted, "warnings": result.warnings,
            "bias_corrected": len(result.summary.bias_corrected)}
