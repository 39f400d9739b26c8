"""The pipeline behind `edgekit deploy`: load → export → build → profile → report, one way.

It never branches on a runtime's name: the target names its backend, the backend says whether it is
available here, and a target that cannot be measured here gets a predicted latency, labelled so.
"""

from __future__ import annotations

import datetime as dt
import functools
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgekit import cost, graph, metrics, recipes, remote, roofline
from edgekit.backends.base import Artifact, Backend, BuildContext, get_backend
from edgekit.calibrate.run import CalibrationOptions, CalibrationResult, calibrate
from edgekit.data import Samples, Splits, demo_data, load_data
from edgekit.errors import BadInput, EdgekitError, MissingRuntime
from edgekit.measurer import LOCAL, Measurer, measurer_for
from edgekit.metrics import Metric
from edgekit.models import DEMO_SPEC, LoadedModel, load_model
from edgekit.plan import PrecisionPlan
from edgekit.precision import accuracy_aware, sensitivity
from edgekit.precision import mixed as mixed_step
from edgekit.precision.mixed import MIXED
from edgekit.precision.timing import Timing
from edgekit.profile import (
    AccuracyCheck,
    Profile,
    ProfileSettings,
    accuracy,
    profile_engine,
    side_by_side,
    time_rounds,
)
from edgekit.report import versions, write_reports
from edgekit.targets import Target, load_target
from edgekit.util import write_json

EXPORT_CHECK_SAMPLES = 8


@dataclass(frozen=True)
class DeployRequest:
    target: str
    model: str | None = None
    data: str | None = None
    out: Path | None = None
    precision: str | None = None
    backend: str | None = None
    input_shapes: tuple[str, ...] = ()
    targets_dir: tuple[Path, ...] = ()
    latency_budget_ms: float | None = None
    plan_file: Path | None = None
    measure: bool = True  # False: stop after the build (edgekit calibrate)
    device: str | None = None  # measure on this inventory device, through its agent
    devices_file: Path | None = None  # the inventory (default: $EDGEKIT_DEVICES, else ./devices.yaml)
    calibration: CalibrationOptions = CalibrationOptions()
    settings: ProfileSettings = ProfileSettings()
    metric: str | None = None  # a built-in metric's name or package.module:function (edgekit.metrics)
    max_accuracy_drop: float | None = None  # with int8/mixed: accuracy-aware int8 (edgekit.precision.accuracy_aware), in points
    recipe: Path | None = None  # a data recipe (calibration/*.yaml): data, and model/metric/shapes unless given

    def __post_init__(self) -> None:
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise BadInput(f"--latency-budget-ms must be positive, got {self.latency_budget_ms}")
        if self.max_accuracy_drop is not None:
            if not 0 <= self.max_accuracy_drop <= 100:
                raise BadInput(f"--max-accuracy-drop is in points, 0 to 100; got {self.max_accuracy_drop}")
            if self.precision not in ("int8", MIXED) or self.plan_file is not None:
                raise BadInput("--max-accuracy-drop without a search makes int8 accuracy-aware: give --precision int8 or "
                               "mixed (and no --plan)")


def searchable(spec: str | None) -> bool:
    """Whether `deploy --latency-budget-ms` can search this model (prune it): PyTorch models (a factory,
    TorchScript, an ExportedProgram, the demo) can, an ONNX file cannot (its budget is only checked)."""
    return spec is None or Path(spec).suffix.lower() != ".onnx"


def default_run_dir(model: LoadedModel, target: Target) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{model.name}-{target.name}-{stamp}"


def choose_precision(asked: str | None, target: Target) -> str:
    if asked is None:
        if target.precisions.default:
            return target.precisions.default
        return "fp32" if "fp32" in target.precisions.supported else target.precisions.fast[0]
    if asked not in target.precisions.supported:
        raise BadInput(f"target {target.name} does not run {asked} (it runs: {', '.join(target.precisions.supported)})")
    return asked


def choose_plan(request: DeployRequest, target: Target) -> PrecisionPlan:
    """The user's plan file, else the --precision default for every layer (mixed: int8 for every
    layer to calibrate, then the sensitivity analysis keeps some in float)."""
    if request.precision == MIXED:
        if request.plan_file is not None:
            raise BadInput("--precision mixed chooses each layer's precision from the sensitivity analysis: leave out --plan")
        sensitivity.check_target(target)
        return PrecisionPlan("int8")
    if request.plan_file is None:
        return PrecisionPlan(default=choose_precision(request.precision, target))
    plan = load_plan(request.plan_file, default=request.precision)
    for precision in {plan.default, *plan.layers.values()}:
        choose_precision(precision, target)
    return plan

def _data(request: DeployRequest, model: LoadedModel) -> Samples | None:
    if request.recipe is not None:
        return recipes.recipe_samples(request.recipe, model.inputs)
    if request.data:
        return load_data(request.data, model.inputs)
    if model.spec == DEMO_SPEC:
        return demo_data(model.inputs)
    return None


def _accuracy_aware(request: DeployRequest, analysis: dict, calibration: CalibrationResult, onnx_path: Path, run_dir: Path,
                    splits: Splits, target: Target, backend_name: str, metric: Metric, model: LoadedModel,
                    report: dict) -> tuple[PrecisionPlan, Path]:
    """The fastest plan within --max-accuracy-drop, every step built and measured here (edgekit.precision.accuracy_aware)."""
    backend = get_backend(backend_name)
    availability = backend.available(target)
    if not (target.local and availability.build and availability.run) or request.device is not None:
        raise BadInput(f"accuracy-aware int8 builds and times every step: {target.name} is not measured on this machine "
                       f"({availability.reason or 'the device is not this machine'}); use --precision mixed or int8 without "
                       "--max-accuracy-drop")
    descent = accuracy_aware.descend(
        analysis=analysis, calibration=calibration, onnx_path=onnx_path, run_dir=run_dir,
        timing=Timing(target=target, backend=backend, threads=request.settings.threads or target.cores,
                                     feed=splits.test.sample(0), settings=request.settings),
        goal=accuracy_aware.Goal(splits=splits, metric=metric, max_drop=request.max_accuracy_drop,
                                 reference=functools.partial(graph.reference_outputs, model)))
    report["precision"]["accuracy_aware"] = descent.record
    report["artifacts"]["accuracy_aware"] = accuracy_aware.FOLDER
    return descent.plan, descent.qdq_path or onnx_path


def _how(request: DeployRequest, backend_name: str | None, metric: Metric | None,
         measurer: Measurer = LOCAL) -> sensitivity.HowToAnalyse:
    return sensitivity.HowToAnalyse(options=request.calibration, threads=request.settings.threads, backend_name=backend_name,
                                    settings=request.settings, measurer=measurer, metric=metric)


def _target_summary(target: Target) -> dict:
    return {"name": target.name, "device": target.device, "vendor": target.vendor, "file": Path(target.file).name}


def deploy(request: DeployRequest, step: Callable[[str], None] = lambda _: None, *,
           model: LoadedModel | None = None, samples: Samples | None = None, plan: PrecisionPlan | None = None,
           beside: tuple[str, Artifact] | None = None, original: LoadedModel | None = None) -> dict:
    """Run the whole pipeline and return report.json's content; the run directory holds the rest.
    The search passes its candidate directly: a loaded (pruned) model, its data and its plan,
    `beside`, an engine (its name, its build) to time the new one side by side with (`side_by_side`), and
    `original`, the model the test metric compares with (else the model built: a pruned model compared with
    itself would hide what pruning cost, for metrics such as cosine that need no labels)."""
    step("target")
    request = recipes.with_recipe(request)
    target = load_target(request.target, list(request.targets_dir))
    backend_name = request.backend or target.backend.name
    device = remote.device_for(request.device, target, request.devices_file, list(request.targets_dir)) if request.device else None
    plan = plan or choose_plan(request, target)
    precision = plan.float_precision if not plan.quantized else "int8"
    mixed = request.precision == MIXED

    step("model")
    model = model or load_model(request.model, list(request.input_shapes))
    samples = samples if samples is not None else _data(request, model)
    splits: Splits | None = recipes.recipe_split(request.recipe, samples) if samples is not None else None
    metric = metrics.task_metric(request.metric, model, splits)

    run_dir = Path(request.out) if request.out else default_run_dir(model, target)
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(target.file, run_dir / "target.yaml")

    step("export")
    onnx_path = graph.export_onnx(model, run_dir / "model.onnx")
    feeds = ([splits.calibration.sample(i) for i in range(min(EXPORT_CHECK_SAMPLES, len(splits.calibration)))]
             if splits else [model.example])
    check = graph.check_export(model, onnx_path, feeds)
    layers = graph.layer_table(onnx_path)
    write_json(run_dir / "layers.json", graph.table_as_dicts(layers))
    predicted = roofline.predict_latency(layers, target, precision)

    report: dict = {
        "edgekit": versions().get("edgekit"),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "incomplete",
        "target": _target_summary(target),
        "backend": backend_name,
        "precision": {"asked": MIXED if mixed else plan.as_dict(), "label": plan.label},
        "model": {"name": model.name, "spec": model.spec, "kind": model.kind, "sha256": model.sha256,
                  "inputs": [str(s) for s in model.inputs], "totals": graph.totals(layers),
                  "export_check": check.__dict__, **({"normalized": model.normalization} if model.normalization else {})},
        "data": None if splits is None else {
            "source": samples.source, "sha256": samples.sha256(),
            "splits": {k: len(getattr(splits, k)) for k in ("calibration", "validation", "test")},
            "warnings": list(samples.warnings)},
        **({"metric": metric.describe()} if metric else {}),
        "latency_ms": predicted.as_dict(),
        "predicted_latency_ms": predicted.as_dict(),
        "predicted_memory_mb": cost.predict_memory_mb(layers, precision),
        "artifacts": {"onnx": "model.onnx", "layers": "layers.json", "target": "target.yaml"},
        "versions": versions(),
    }
    if request.latency_budget_ms is not None:
        report["budget"] = {"latency_ms": request.latency_budget_ms}

    build_from = onnx_path
    planned = {layer: plan.precision_of(layer) for layer in quantizable_layers(onnx_path)}
    if plan.quantized:
        step("calibrate")
        if splits is None:
            _finish(run_dir, report)
            raise BadInput("int8 needs calibration data: pass --data (a few hundred samples of real inputs)")
        calibration = calibrate(onnx_path, splits.calibration, target, plan, run_dir, request.calibration, metric=metric)
        report["calibration"] = calibration_summary(calibration)
        report["artifacts"].update(calibration.files)
        planned = calibration.planned
        plan = PrecisionPlan(default=plan.default, layers=planned)
        build_from = calibration.qdq_path
        if request.max_accuracy_drop is not None:
            step("sensitivity")
            analysis = sensitivity.analyse(onnx_path, splits, target, run_dir, calibration=calibration,
                                           how=_how(request, backend_name, metric))
            report["artifacts"]["sensitivity"] = sensitivity.FILE
            step("accuracy-aware int8")
            plan, build_from = _accuracy_aware(request, analysis, calibration, onnx_path, run_dir, splits, target,
                                               backend_name, metric, model, report)
            mixed_step.predict_shipped(report, layers, target, plan)
            planned = dict(plan.layers)
        elif mixed:
            step("sensitivity")
            analysis = sensitivity.analyse(onnx_path, splits, target, run_dir, calibration=calibration,
                                           how=_how(request, backend_name, metric, measurer_for(device)))
            report["artifacts"]["sensitivity"] = sensitivity.FILE
            plan, build_from = mixed_step.plan_from_analysis(analysis, calibration, onnx_path, run_dir, report, layers, target)
            planned = dict(plan.layers)
    report["precision"].update({"label": plan.label, "planned": planned})

    step("build")
    try:
        backend = get_backend(backend_name)
    except MissingRuntime as err:
        if not request.measure:  # calibrating for a device whose runtime is not here: the files are the product
            report["status"] = f"calibrated; build the engine on the device ({err})"
            _finish(run_dir, report)
            report["run_dir"] = str(run_dir)
            return report
        _finish(run_dir, report)
        raise MissingRuntime(f"target {target.name} needs the {backend_name} backend: {err}; "
                             f"produced {run_dir / 'model.onnx'} and {run_dir / 'report.json'} (latency predicted)") from err
    availability = backend.available(target)
    report["versions"].update(availability.versions)
    if not availability.build:
        _finish(run_dir, report)
        raise MissingRuntime(f"target {target.name}: {availability.reason}; produced {run_dir / 'model.onnx'} "
                             f"and {run_dir / 'report.json'} (latency predicted)")
    scales = run_dir / report["artifacts"]["scales"] if "scales" in report["artifacts"] else None
    context = BuildContext(model=model, float_onnx=onnx_path, calibration=splits.calibration if splits else None, scales=scales)
    artifact = backend.build(onnx_path=build_from, plan=plan, target=target, out_dir=run_dir, context=context)
    threads = request.settings.threads or target.cores
    feed = splits.test.sample(0) if splits else model.example
    side_by_side = None
    choice = report["precision"].get("mixed", {})
    if choice.get("chosen") == MIXED and choice["kind"] == "measured" and target.local and availability.run:
        step("compare")
        timing = Timing(target=target, backend=backend, threads=threads, feed=feed, settings=request.settings)
        plan, artifact, side_by_side = mixed_step.never_slower(timing, artifact, plan, onnx_path, run_dir, choice)
        planned = dict(plan.layers)
        report["precision"].update({"label": plan.label, "planned": planned})
        mixed_step.predict_shipped(report, layers, target, plan)
    report["artifacts"]["engine"] = artifact.path.name
    report["artifacts"]["engine_files"] = [str(f.relative_to(run_dir)) if f.is_relative_to(run_dir) else f.name
                                           for f in artifact.files]
    if artifact.notes or artifact.pending:
        report["build"] = {**artifact.notes, "pending": artifact.pending}
    if artifact.notes.get("predicted_latency_ms") and not (target.local and availability.run):
        report["latency_ms"] = artifact.notes["predicted_latency_ms"]  # the backend's own model of its engine
    report["status"] = (f"built; latency predicted ({availability.reason or 'the device is not this machine'})" if request.measure
                        else "built; not measured (edgekit deploy measures it)")
    if artifact.pending:
        report["status"] = (f"built up to the engine, which is built where its tool is: {artifact.pending}; "
                            f"latency predicted ({availability.reason or 'the device is not this machine'})")

    if device is not None and request.measure:
        step("profile on the device")
        try:
            result = remote.measure(device, artifact, target=target, settings=request.settings, feed=feed,
                                    source=remote.DeviceBuild(build_from, plan, run_dir), beside=beside)
        except EdgekitError:
            _finish(run_dir, report)
            raise
        _add_device_profile(report, result, device)
        if splits is not None and (availability.run or availability.check):
            step("check")
            where = f"this machine, the same engine with {backend_name}" if availability.run else availability.check_how
            report["accuracy"] = _checked_here(backend, artifact, target, threads, splits, original or model, where, metric)
        report["status"] = f"complete; measured on device {device.name} through its agent"
    elif target.local and availability.run and request.measure:
        step("profile")
        reference = functools.partial(graph.reference_outputs, original or model)
        source = f"measured on {target.name} ({target.device}) with {backend_name}"
        if beside is not None and side_by_side is None:
            step("side by side")
            side_by_side = _time_beside(backend, artifact, beside, target, threads, feed, request.settings, report)
            source += f", side by side with {beside[0]}"
        try:
            measured: Profile = profile_engine(
                lambda: backend.load(artifact, target=target, threads=threads), feed, request.settings,
                threads=threads, source=source + (", side by side with fp32" if side_by_side else ""),
                check=AccuracyCheck(splits.test, reference, metric) if splits else None, times=side_by_side)
        except EdgekitError:
            _finish(run_dir, report)
            raise
        _add_profile(report, measured)
        if choice and choice["fp32_p50_ms"] is None:  # every layer stayed float: this engine is the fp32 one
            choice["fp32_p50_ms"] = measured.latency.p50
        report["precision"].update(verify_precision(backend, artifact, target, threads, feed, planned))
        report["status"] = "complete"
    elif availability.check and request.measure and splits is not None:
        step("check")  # the device is not here, but its model's arithmetic is: accuracy, latency predicted
        report["accuracy"] = _checked_here(backend, artifact, target, threads, splits, original or model,
                                           availability.check_how, metric)
        report["status"] += f"; accuracy checked here ({availability.check_how})"
    _add_budget(report)
    step("report")
    _finish(run_dir, report)
    report["run_dir"] = str(run_dir)
    return report


def inspect_sensitivity(request: DeployRequest, step: Callable[[str], None] = lambda _: None) -> tuple[dict, Path]:
    """`edgekit inspect --sensitivity`: export, calibrate every layer int8 on the calibration split,
    analyse each layer (`edgekit.precision.sensitivity`); sensitivity.json's content and its path."""
    step("target")
    request = recipes.with_recipe(request)
    target = load_target(request.target, list(request.targets_dir))
    sensitivity.check_target(target)
    if request.data is None and request.recipe is None and request.model not in (None, DEMO_SPEC):
        raise BadInput(f"--sensitivity needs data for {request.model}: pass --data (a few hundred real inputs; the "
                       "calibration split sets the scales, the validation split measures each layer's accuracy)")
    step("model")
    model = load_model(request.model, list(request.input_shapes))
    splits = recipes.recipe_split(request.recipe, _data(request, model))
    metric = metrics.task_metric(request.metric, model, splits)
    run_dir = Path(request.out) if request.out else default_run_dir(model, target)
    run_dir.mkdir(parents=True, exist_ok=True)
    step("export")
    onnx_path = graph.export_onnx(model, run_dir / "model.onnx")
    graph.check_export(model, onnx_path, [splits.calibration.sample(i) for i in range(min(EXPORT_CHECK_SAMPLES, len(splits.calibration)))])
    step("calibrate")
    calibration = calibrate(onnx_path, splits.calibration, target, PrecisionPlan("int8"), run_dir, request.calibration,
                            metric=metric)
    step("sensitivity")
    result = sensitivity.analyse(onnx_path, splits, target, run_dir, calibration=calibration,
                                 how=_how(request, request.backend, metric))
    return result, run_dir / sensitivity.FILE


def quantizable_layers(onnx_path: Path) -> list[str]:
    import onnx

    from edgekit.calibrate.qdq import quantizable_layers as layers_of

    return list(layers_of(onnx.load(str(onnx_path), load_external_data=False)))


def load_plan(path: Path, default: str | None = None) -> PrecisionPlan:
    """A plan file: YAML or JSON, either {layer: precision} or {default: P, layers: {layer: precision}}."""
    from edgekit.user_files import read_yaml

    data = read_yaml(path, "plan file")
    if not isinstance(data, dict):
        raise BadInput(f"plan file {path}: expected a mapping of layer: precision")
    if "layers" in data:
        layers, plan_default = data.get("layers") or {}, data.get("default", default or "fp32")
    else:
        layers, plan_default = data, default or "fp32"
    if not isinstance(layers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in layers.items()):
        raise BadInput(f"plan file {path}: 'layers' must map layer names to fp32, fp16 or int8")
    return PrecisionPlan(default=plan_default, layers=layers)


def calibration_summary(result: CalibrationResult) -> dict:
    return {"method": result.method, "selection": result.selection,
            "samples": result.samples, "seconds": round(result.seconds, 2),
            "int8_layers": len(result.int8_layers), "demoted": result.demoted, "warnings": result.warnings,
            "bias_corrected": len(result.summary.bias_corrected)}


def verify_precision(backend: Backend, artifact, target: Target, threads: int, feed: dict, planned: dict[str, str]) -> dict:
    """What the runtime really executes for each planned layer, and every layer where that differs."""
    engine = backend.load(artifact, target=target, threads=threads)
    executed = engine.executed(feed, list(planned))
    mismatches = {layer: {"planned": planned[layer], "executed": executed[layer].precision}
                  for layer in planned if layer in executed and executed[layer].precision != planned[layer]}
    return {"executed": {layer: e.precision for layer, e in executed.items()},
            "kernels": {layer: e.exec_type for layer, e in executed.items()},
            "mismatches": mismatches,
            # fused into a runtime op that no longer names them (e.g. OpenVINO's attention subgraph)
            "unverified": [layer for layer in planned if layer not in executed]}


def _time_beside(backend, artifact: Artifact, beside: tuple[str, Artifact], target: Target, threads: int, feed: dict,
                 settings: ProfileSettings, report: dict) -> list[float]:
    """Time the new engine and another one in alternating rounds; the report gets the other's p50 and
    the ratio of the two per round (median and range), which drift on the device does not move."""
    name, other = beside
    engines = {"built": backend.load(artifact, target=target, threads=threads),
               name: backend.load(other, target=target, threads=threads)}
    slices = time_rounds(engines, feed, settings)
    report["side_by_side"] = side_by_side(name, str(other.path), slices["built"], slices[name])
    return [t for s in slices["built"] for t in s]


def _checked_here(backend, artifact: Artifact, target: Target, threads: int, splits: Splits, model, where: str,
                  metric: Metric | None = None) -> dict:
    """The engine's accuracy on the test split, run on this machine (`where` says how that stands for the device)."""
    engine = backend.load(artifact, target=target, threads=threads)
    checked = accuracy(engine, splits.test, functools.partial(graph.reference_outputs, model), metric)
    return {**checked.as_dict(), "where": where}


def _add_profile(report: dict, measured: Profile) -> None:
    report["latency_ms"] = measured.latency.as_dict()
    report["throughput_fps"] = round(measured.throughput_fps, 1)
    report["threads"] = measured.threads
    report["memory"] = measured.memory
    report["layers"] = [layer.__dict__ for layer in measured.layers]
    report["accuracy"] = measured.accuracy.as_dict() if measured.accuracy else None
    predicted = report["predicted_latency_ms"]["p50"]
    report["cost_model_error"] = round(predicted / measured.latency.p50 - 1, 3)


def _add_device_profile(report: dict, result: dict, device) -> None:
    """The agent's measurement in the report, as a local one is written (`_add_profile`)."""
    report["latency_ms"] = result["latency_ms"]
    for key in ("throughput_fps", "threads", "memory", "layers"):
        report[key] = result.get(key)
    if "side_by_side" in result:
        report["side_by_side"] = result["side_by_side"]
    report["device"] = {"name": device.name, "url": device.url, "target": device.target, **result.get("agent", {}),
                        "versions": result.get("versions", {})}
    if result.get("build"):
        report["device"]["built"] = {k: v for k, v in result["build"].items() if k != "notes"} | {"files": result.get("files")}
    report["cost_model_error"] = round(report["predicted_latency_ms"]["p50"] / result["latency_ms"]["p50"] - 1, 3)


def _add_budget(report: dict) -> None:
    budget = report.get("budget")
    if budget:
        budget["met"] = report["latency_ms"]["p50"] <= budget["latency_ms"]
        budget["judged_on"] = report["latency_ms"]["kind"]


def _finish(run_dir: Path, report: dict) -> None:
    write_reports(run_dir, report)
