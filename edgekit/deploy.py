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

from edgekit import cost, graph
from edgekit.backends.base import get_backend
from edgekit.data import Samples, Splits, demo_data, load_data, split
from edgekit.errors import BadInput, EdgekitError, MissingRuntime
from edgekit.models import DEMO_SPEC, LoadedModel, load_model
from edgekit.plan import PrecisionPlan
from edgekit.profile import Profile, ProfileSettings, profile_engine
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
    settings: ProfileSettings = ProfileSettings()

    def __post_init__(self) -> None:
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise BadInput(f"--latency-budget-ms must be positive, got {self.latency_budget_ms}")


def default_run_dir(model: LoadedModel, target: Target) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{model.name}-{target.name}-{stamp}"


def choose_precision(asked: str | None, target: Target) -> str:
    if asked is None:
        return "fp32" if "fp32" in target.precisions.supported else target.precisions.fast[0]
    if asked not in target.precisions.supported:
        raise BadInput(f"target {target.name} does not run {asked} (it runs: {', '.join(target.precisions.supported)})")
    return asked


def _data(request: DeployRequest, model: LoadedModel) -> Samples | None:
    if request.data:
        return load_data(request.data, model.inputs)
    if model.spec == DEMO_SPEC:
        return demo_data(model.inputs)
    return None


def _target_summary(target: Target) -> dict:
    return {"name": target.name, "device": target.device, "vendor": target.vendor, "file": Path(target.file).name}


def deploy(request: DeployRequest, step: Callable[[str], None] = lambda _: None) -> dict:
    """Run the whole pipeline and return report.json's content; the run directory holds the rest."""
    step("target")
    target = load_target(request.target, list(request.targets_dir))
    backend_name = request.backend or target.backend.name
    precision = choose_precision(request.precision, target)
    plan = PrecisionPlan(default=precision)

    step("model")
    model = load_model(request.model, list(request.input_shapes))
    samples = _data(request, model)
    splits: Splits | None = split(samples) if samples is not None else None

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
    predicted = cost.predict_latency(layers, target, precision)

    report: dict = {
        "edgekit": versions().get("edgekit"),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "incomplete",
        "target": _target_summary(target),
        "backend": backend_name,
        "precision": {"planned": plan.as_dict()},
        "model": {"name": model.name, "spec": model.spec, "kind": model.kind, "sha256": model.sha256,
                  "inputs": [str(s) for s in model.inputs], "totals": graph.totals(layers),
                  "export_check": check.__dict__},
        "data": None if splits is None else {
            "source": samples.source, "sha256": samples.sha256(),
            "splits": {k: len(getattr(splits, k)) for k in ("calibration", "validation", "test")}},
        "latency_ms": predicted.as_dict(),
        "predicted_latency_ms": predicted.as_dict(),
        "predicted_memory_mb": cost.predict_memory_mb(layers, precision),
        "artifacts": {"onnx": "model.onnx", "layers": "layers.json", "target": "target.yaml"},
        "versions": versions(),
    }
    if request.latency_budget_ms is not None:
        report["budget"] = {"latency_ms": request.latency_budget_ms}

    step("build")
    try:
        backend = get_backend(backend_name)
    except MissingRuntime as err:
        _finish(run_dir, report)
        raise MissingRuntime(f"target {target.name} needs the {backend_name} backend: {err}; "
                             f"produced {run_dir / 'model.onnx'} and {run_dir / 'report.json'} (latency predicted)") from err
    availability = backend.available(target)
    report["versions"].update(availability.versions)
    if not availability.build:
        _finish(run_dir, report)
        raise MissingRuntime(f"target {target.name}: {availability.reason}; produced {run_dir / 'model.onnx'} "
                             f"and {run_dir / 'report.json'} (latency predicted)")
    artifact = backend.build(onnx_path=onnx_path, plan=plan, target=target, out_dir=run_dir)
    report["artifacts"]["engine"] = artifact.path.name
    report["artifacts"]["engine_files"] = [f.name for f in artifact.files]
    report["status"] = f"built; latency predicted ({availability.reason or 'the device is not this machine'})"

    if target.local and availability.run:
        step("profile")
        threads = request.settings.threads or target.cores
        reference = functools.partial(graph.reference_outputs, model)
        feed = splits.test.sample(0) if splits else model.example
        try:
            measured: Profile = profile_engine(
                lambda: backend.load(artifact, target=target, threads=threads), feed, request.settings,
                threads=threads, source=f"measured on {target.name} ({target.device}) with {backend_name}",
                test=splits.test if splits else None, reference=reference)
        except EdgekitError:
            _finish(run_dir, report)
            raise
        _add_profile(report, measured)
        report["status"] = "complete"
    _add_budget(report)
    step("report")
    _finish(run_dir, report)
    report["run_dir"] = str(run_dir)
    return report


def _add_profile(report: dict, measured: Profile) -> None:
    report["latency_ms"] = measured.latency.as_dict()
    report["throughput_fps"] = round(measured.throughput_fps, 1)
    report["threads"] = measured.threads
    report["memory"] = measured.memory
    report["layers"] = [layer.__dict__ for layer in measured.layers]
    report["accuracy"] = measured.accuracy.as_dict() if measured.accuracy else None
    predicted = report["predicted_latency_ms"]["p50"]
    report["cost_model_error"] = round(predicted / measured.latency.p50 - 1, 3)


def _add_budget(report: dict) -> None:
    budget = report.get("budget")
    if budget:
        budget["met"] = report["latency_ms"]["p50"] <= budget["latency_ms"]
        budget["judged_on"] = report["latency_ms"]["kind"]


def _finish(run_dir: Path, report: dict) -> None:
    write_reports(run_dir, report)
