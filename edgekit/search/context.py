"""The search's set-up: where it runs and what it works on (SearchContext), and the original model as
measured before the walk (Original), the yardstick every candidate is judged against."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import graph
from edgekit.data import Samples, Splits, split
from edgekit.errors import BadInput
from edgekit.measurer import Measurer, measurer_for
from edgekit.metrics import Metric, choose_metric
from edgekit.models import LoadedModel, load_model
from edgekit.precision import sensitivity
from edgekit.recipes import model_samples
from edgekit.search import evaluate, fixed_point, nsga
from edgekit.search import space as spaces
from edgekit.search.anchor import Anchor, timed_original
from edgekit.search.request import SearchRequest
from edgekit.search.study import DB_FILE, Trials
from edgekit.targets import Target, load_target
from edgekit.util import write_json

VECTOR_METRICS = ("cosine", "rel-mse", "psnr")  # outputs compared as vectors: distilled by MSE, not KL
BUILD_RESERVE_S = 30.0  # export, calibration, build and measurement of a candidate, about


@dataclass(frozen=True)
class SearchContext:
    """What every stage of the search reads and none changes: the request, the target (and the inventory
    device that measures it), the model and its data split three ways, the run directory, when the search
    started and where its progress goes."""

    request: SearchRequest
    target: Target
    backend_name: str
    measurer: Measurer  # where engines are timed: here, or on the --device through its agent
    loaded: LoadedModel
    samples: Samples
    splits: Splits
    run_dir: Path
    started: float  # time.monotonic() when the search started
    progress: Callable[[str], None]

    @property
    def teacher(self):
        """The original module: what every candidate is pruned and distilled from."""
        return self.loaded.module

    @property
    def deadline(self) -> float:
        """--time-limit bounds the whole search."""
        return self.started + self.request.time_limit_s

    @property
    def walk_deadline(self) -> float:
        """The walk stops early enough for the chosen candidate's distillation, build and measurement (a
        round starts only if one fits); on the device, for the build of the walked model before them too
        (edgekit.search.rounds)."""
        builds = 2 if self.measurer.reaches(self.target) else 1
        return self.deadline - self.request.final_finetune_s - builds * BUILD_RESERVE_S


@dataclass(frozen=True)
class Original:
    """The original model as the search measured it before walking."""

    onnx_path: Path
    layers: list  # its export's layer table: the names precision plans are written in
    anchor: Anchor | None  # its float engine timed on the target (edgekit.search.anchor); None for fixed point
    space: spaces.Space  # the candidates cut from it
    validation_ref: np.ndarray  # its outputs on the validation split
    metric: Metric
    accuracy: float  # its metric on the validation split

    @property
    def objective(self) -> str:
        """What distillation minimises (edgekit.compress.distill)."""
        return "mse" if self.metric.name in VECTOR_METRICS else "auto"


def open_search(request: SearchRequest, progress: Callable[[str], None]) -> SearchContext:
    """Load the target (and the device, when measured through its agent), the model and its data; choose the
    run directory."""
    started = time.monotonic()
    target = load_target(request.target, list(request.targets_dir))
    backend_name = request.backend or target.backend.name
    measurer = measurer_for(request.device, target, request.devices_file, list(request.targets_dir))
    loaded = load_model(request.model)
    if loaded.kind != "torch":
        raise BadInput(f"{loaded.spec}: the search prunes PyTorch models (a factory, TorchScript or ExportedProgram); "
                       "for an ONNX model use edgekit deploy --precision mixed")
    samples = model_samples(loaded, request.data, missing=f"the search needs data for {loaded.spec}: pass --data "
                            "(calibration, validation and test splits are made from it)")
    splits = split(samples)
    for warning in samples.warnings:
        progress(f"warning: {warning}")
    run_dir = _run_dir(request, loaded.name, target.name)
    return SearchContext(request, target, backend_name, measurer, loaded, samples, splits, run_dir, started, progress)


def _run_dir(request: SearchRequest, name: str, target: str) -> Path:
    if request.resume is not None:
        if not Path(request.resume).is_dir():
            raise BadInput(f"--resume {request.resume}: no such run directory")
        if request.storage is None and not (Path(request.resume) / DB_FILE).is_file():
            raise BadInput(f"--resume {request.resume}: it holds no search ({DB_FILE}); start one there with "
                           f"--out {request.resume}")
        return Path(request.resume)
    return Path(request.out) if request.out else Path("runs") / f"{name}-{target}-search-{dt.datetime.now():%Y%m%d-%H%M%S}"


def open_trials(ctx: SearchContext) -> Trials:
    """The run directory's trials (Optuna storage): a new study, or the one a resumed search left."""
    request = ctx.request
    trials = Trials(ctx.run_dir, request.storage, resume=request.resume is not None,
                    sampler=nsga.sampler() if request.strategy == "nsga" else None)
    if trials.interrupted:
        ctx.progress(f"resumed: {trials.interrupted} interrupted trial(s) marked failed, {len(trials)} kept")
    return trials


def measure_original(ctx: SearchContext) -> Original:
    """Export the original model, time its float engine on the target, cut the search space from it
    (space.json) and score it on the validation split."""
    request, loaded, splits, target = ctx.request, ctx.loaded, ctx.splits, ctx.target
    ctx.progress("exporting and calibrating the original model")
    onnx_path = ctx.run_dir / "model.onnx"
    if not onnx_path.exists():
        graph.export_onnx(loaded, onnx_path)
    layers = graph.layer_table(onnx_path)
    fixed = fixed_point.is_fixed_point(target)  # FPGA: bit widths, edgekit's estimate of the hls4ml design
    anchor = None if fixed else timed_original(onnx_path, sensitivity.float_precision(target), target, ctx.backend_name,
                                               ctx.run_dir, splits.test.sample(0), request.settings, ctx.measurer)
    space = spaces.build_space(loaded, onnx_path, target)
    write_json(ctx.run_dir / "space.json", space.as_dict())
    teacher = loaded.module.eval()
    validation_ref = evaluate.outputs(teacher, splits.validation, loaded)
    metric = choose_metric(request.metric, splits.validation.labels, [validation_ref[:1]])
    ctx.progress(f"metric: {metric.name} ({metric.unit}{'; ' + metric.why if metric.why else ''})")
    accuracy = evaluate.score(validation_ref, splits.validation, validation_ref, metric)
    return Original(onnx_path, layers, anchor, space, validation_ref, metric, accuracy)


def validation_accuracy(ctx: SearchContext, original: Original, module) -> float:
    """The module's metric on the validation split, against the original's outputs (its float weights)."""
    splits = ctx.splits
    return evaluate.score(evaluate.outputs(module, splits.validation, ctx.loaded), splits.validation,
                          original.validation_ref, original.metric)
