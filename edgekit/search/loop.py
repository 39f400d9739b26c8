"""`edgekit search`: the budget-driven search with the device in the loop.

1. Export the model, calibrate it and measure each layer's int8 sensitivity on the target: the
   precision plan (int8 where it is harmless and faster, `--precision mixed`'s rule).
2. The strategy walks the pruning space (Torch-Pruning groups, kept channels aligned to the target)
   scoring candidates with the cost model (latency, memory) and validation accuracy after a short
   distillation; every candidate is an Optuna trial in the run directory.
3. Closed loop: the chosen candidate is distilled longer, exported, calibrated, built with the real
   backend and measured on the device. If the measurement misses the budget, the cost model learns
   from it, the walk's budget tightens by the miss, and the walk goes on.
A target that cannot be measured here is searched on the cost model alone; its latencies say so.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit import cost, graph
from edgekit.calibrate import sensitivity
from edgekit.calibrate.run import CalibrationOptions
from edgekit.data import load_data, split
from edgekit.errors import BadInput
from edgekit.metrics import Metric, choose_metric
from edgekit.models import load_model
from edgekit.plan import PrecisionPlan
from edgekit.profile import ProfileSettings
from edgekit.search import evaluate, fixed_point, greedy, nsga
from edgekit.search.anchor import Anchor, timed_original
from edgekit.search.moves import MOVES, chosen_moves, structure_moves
from edgekit.search.study import DB_FILE, Evaluation, Trials
from edgekit.search_report import write_search_report
from edgekit.targets import load_target
from edgekit.util import write_json

STRATEGIES = ("greedy", "nsga")
VECTOR_METRICS = ("cosine", "rel-mse", "psnr")  # outputs compared as vectors: distilled by MSE, not KL
MAX_ROUNDS = 4  # closed-loop rounds: build, measure, tighten
STEP_FINETUNE_S = 5.0  # distillation of each proposal
# A proposal's accuracy after its short distillation understates what the chosen candidate's longer one
# recovers (measured on the ResNet-like: 0.979 after 10 s, 0.988 after 30 s, 0.992 unpruned), so the
# walk may go this far below the allowed drop; the final accuracy is measured and reported as it is.
WALK_SLACK_PT = 3.0
FINAL_FINETUNE_S = 60.0  # distillation of the chosen candidate before it is built
BUILD_RESERVE_S = 30.0  # export, calibration, build and measurement of a candidate, about
TIGHTEN_MARGIN = (0.03, 0.15)  # after a miss, the walk aims this far below the budget at least / at most
# A candidate measured this close under the budget is tightened once more (the last round that met the
# budget ships): the side-by-side ratio's run-to-run spread on this host, 10 repeats of one pair of
# engines while the absolute p50 moved by 50 %: standard deviation 0.7 %, largest deviation 1.7 %.
MEASURED_MARGIN = 0.02


@dataclass(frozen=True)
class SearchRequest:
    target: str
    latency_budget_ms: float | None = None
    model: str | None = None
    data: str | None = None
    out: Path | None = None
    memory_budget_mb: float | None = None
    flash_budget_mb: float | None = None  # the shipped engine's files, compressed (edgekit.compress.shrink)
    max_accuracy_drop: float = 1.0  # points of validation accuracy below the original model
    strategy: str = "greedy"
    trials: int = 200
    time_limit_s: float = 600.0
    resume: Path | None = None
    storage: str | None = None
    backend: str | None = None
    step_finetune_s: float = STEP_FINETUNE_S
    final_finetune_s: float = FINAL_FINETUNE_S
    calibration: CalibrationOptions = CalibrationOptions()
    settings: ProfileSettings = ProfileSettings()
    targets_dir: tuple[Path, ...] = ()
    device: str | None = None  # measure on this inventory device through its agent (every measurement)
    devices_file: Path | None = None
    speedup: float | None = None  # instead of a budget in ms: at least this many times faster than the original
    metric: str | None = None  # what accuracy means (edgekit.metrics); default: chosen from the data
    moves: tuple[str, ...] = MOVES  # the structural moves the walk may take (NSGA-II samples channel counts)

    def __post_init__(self) -> None:
        unknown = [m for m in self.moves if m not in MOVES]
        if unknown or not self.moves:
            raise BadInput(f"--moves: {', '.join(unknown) or 'none given'} (known: {', '.join(MOVES)})")
        if (self.latency_budget_ms is None) == (self.speedup is None):
            raise BadInput("give the budget as --latency-budget-ms or as --speedup (one of the two)")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise BadInput(f"--latency-budget-ms must be positive, got {self.latency_budget_ms}")
        if self.speedup is not None and not self.speedup > 0:
            raise BadInput(f"--speedup must be positive, got {self.speedup}")
        for option, value in (("--memory-budget-mb", self.memory_budget_mb), ("--flash-budget-mb", self.flash_budget_mb)):
            if value is not None and not value > 0:
                raise BadInput(f"{option} must be positive, got {value}")
        if self.strategy not in STRATEGIES:
            raise BadInput(f"unknown strategy '{self.strategy}' (known: {', '.join(STRATEGIES)})")
        if self.trials < 1 or not self.time_limit_s > 0:
            raise BadInput("--trials and --time-limit must be positive")
        for option, value in (("--finetune", self.final_finetune_s), ("step fine-tuning", self.step_finetune_s)):
            if not 0 <= value < math.inf:
                raise BadInput(f"{option} is seconds of distillation, zero or more; got {value}")
        if not 0 <= self.max_accuracy_drop <= 100:
            raise BadInput(f"--max-accuracy-drop is in points, 0 to 100; got {self.max_accuracy_drop}")


@dataclass
class Round:
    """One closed-loop round: the candidate built and what the device said."""

    walk_budget_ms: float
    stopped: str
    candidate: dict
    predicted_ms: float
    measured_ms: float | None  # on the anchor's scale (edgekit.search.anchor): what the budget is judged on
    accuracy_validation: float
    measurement: dict | None = None  # the side-by-side timing behind measured_ms
    report: dict = field(default_factory=dict)


def _run_dir(request: SearchRequest, name: str, target: str) -> Path:
    if request.resume is not None:
        if not Path(request.resume).is_dir():
            raise BadInput(f"--resume {request.resume}: no such run directory")
        if request.storage is None and not (Path(request.resume) / DB_FILE).is_file():
            raise BadInput(f"--resume {request.resume}: it holds no search ({DB_FILE}); start one there with "
                           f"--out {request.resume}")
        return Path(request.resume)
    import datetime as dt

    return Path(request.out) if request.out else Path("runs") / f"{name}-{target}-search-{dt.datetime.now():%Y%m%d-%H%M%S}"


def search(request: SearchRequest, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Run the search and the closed loop; returns search.json's content (also written to the run directory)."""
    import torch

    from edgekit.compress.distill import distill
    from edgekit.compress.prune import prune
    from edgekit.deploy import DEMO_SPEC, DeployRequest, demo_data, deploy
    from edgekit.search import space as spaces

    started = time.monotonic()
    # --time-limit bounds the whole search: the walk stops early enough for the chosen candidate's
    # distillation, build and measurement (a round starts only if one fits)
    deadline = started + request.time_limit_s
    walk_deadline = deadline - request.final_finetune_s - BUILD_RESERVE_S
    target = load_target(request.target, list(request.targets_dir))
    backend_name = request.backend or target.backend.name
    device = None
    if request.device:
        from edgekit.remote import device_for

        device = device_for(request.device, target, request.devices_file, list(request.targets_dir))
    loaded = load_model(request.model)
    if loaded.kind != "torch":
        raise BadInput(f"{loaded.spec}: the search prunes PyTorch models (a factory, TorchScript or ExportedProgram); "
                       "for an ONNX model use edgekit deploy --precision mixed")
    if request.data is None and loaded.spec != DEMO_SPEC:
        raise BadInput(f"the search needs data for {loaded.spec}: pass --data (calibration, validation and test splits are made from it)")
    samples = load_data(request.data, loaded.inputs) if request.data else demo_data(loaded.inputs)
    splits = split(samples)
    for warning in samples.warnings:
        progress(f"warning: {warning}")
    run_dir = _run_dir(request, loaded.name, target.name)
    strategy = nsga if request.strategy == "nsga" else greedy
    trials = Trials(run_dir, request.storage, resume=request.resume is not None,
                    sampler=nsga.sampler() if strategy is nsga else None)
    if trials.interrupted:
        progress(f"resumed: {trials.interrupted} interrupted trial(s) marked failed, {len(trials)} kept")

    progress("exporting and calibrating the original model")
    onnx_path = run_dir / "model.onnx"
    if not onnx_path.exists():
        graph.export_onnx(loaded, onnx_path)
    reference = graph.layer_table(onnx_path)
    fixed = fixed_point.is_fixed_point(target)  # FPGA: bit widths, edgekit's estimate of the hls4ml design
    anchor = None if fixed else timed_original(onnx_path, sensitivity.float_precision(target), target, backend_name,
                                               run_dir, splits.test.sample(0), request.settings, device)
    space = spaces.build_space(loaded, onnx_path, target)
    write_json(run_dir / "space.json", space.as_dict())

    teacher = loaded.module.eval()
    example = tuple(torch.from_numpy(loaded.example[s.name]) for s in loaded.inputs)
    validation_ref = evaluate.outputs(teacher, splits.validation, loaded)
    metric = choose_metric(request.metric, splits.validation.labels, [validation_ref[:1]])
    progress(f"metric: {metric.name} ({metric.unit}{'; ' + metric.why if metric.why else ''})")
    base_accuracy = evaluate.score(validation_ref, splits.validation, validation_ref, metric)
    design = fixed_point.DesignCost(target, loaded, splits.calibration.inputs) if fixed else None
    if design is not None:
        plan, analysis = _width_plan(design, teacher, loaded, splits, target, space, validation_ref, run_dir, progress)
    else:
        plan, analysis = _precision_plan(loaded, onnx_path, splits, target, backend_name, run_dir, request, progress, device,
                                         metric)
    costly = _int8_costs(analysis, plan) if not fixed else {}
    model_cost = cost.CostModel(target, backend_name, table=_device_table(target, backend_name, device))
    fast_reference = evaluate.fast_layer_table(teacher, loaded)

    fast_to_reference = evaluate.rename_by_order(reference, fast_reference)

    def precisions_of(candidate, layers) -> dict[str, str]:
        if not candidate.structural:
            names = evaluate.rename_by_order(reference, layers)
        else:  # the graph changed: through the fast export's scoped names
            names = {ours: fast_to_reference[theirs]
                     for ours, theirs in evaluate.carry_names(fast_reference, layers).items()}
        return {ours: candidate.precision.get(theirs, candidate.default_precision) for ours, theirs in names.items()}

    def built_precisions(candidate, module, built_layers) -> dict[str, str]:
        """Precisions by the built export's layer names (torch.export names: matched by graph order, through
        the fast export's scoped names where the graph changed)."""
        if not candidate.structural:
            names = evaluate.rename_by_order(reference, built_layers)
            return {ours: candidate.precision.get(theirs, candidate.default_precision) for ours, theirs in names.items()}
        fast = evaluate.fast_layer_table(module, loaded)
        of_fast = precisions_of(candidate, fast)
        return {ours: of_fast.get(theirs, candidate.default_precision)
                for ours, theirs in evaluate.rename_by_order(fast, built_layers).items()}

    def predict(candidate, module) -> tuple[float, float]:
        if design is not None:
            return design.predict(module, [candidate.precision.get(n, candidate.default_precision) for n in space.layers])
        layers = evaluate.fast_layer_table(module, loaded)
        precisions = precisions_of(candidate, layers)
        memory = cost.estimate_memory(layers, precisions, candidate.default_precision).total_mb
        return model_cost.predict(layers, precisions, candidate.default_precision).p50, memory

    objective = "mse" if metric.name in VECTOR_METRICS else "auto"  # what distillation minimises
    distill = functools.partial(distill, objective=objective)

    def finetune(module) -> None:
        distill(module, teacher, splits.calibration.inputs, seconds=request.step_finetune_s, seed=0)

    def accuracy(module) -> float:
        return evaluate.score(evaluate.outputs(module, splits.validation, loaded), splits.validation, validation_ref, metric)

    def int8_validation(built: _Built) -> float | None:
        """The built Q/DQ model's metric on the validation split, in ONNX Runtime (None: nothing is int8)."""
        qdq = built.folder / "model.int8.onnx"
        if fixed or not qdq.exists() or "int8" not in set(built.precisions.values()) | {built.report.get("precision", {}).get("label")}:
            return None
        import onnxruntime as ort

        session = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
        out = np.concatenate([session.run(None, splits.validation.sample(i))[0] for i in range(len(splits.validation))])
        return evaluate.score(out, splits.validation, validation_ref, metric)

    def with_qat(built: _Built, state) -> _Built:
        """Quantization-aware fine-tuning when post-training int8 puts the candidate below the allowed drop
        on validation (and time allows one more distillation and build): built in `qat/` beside it, kept if
        its int8 metric is higher; search.json reports both."""
        from edgekit.calibrate.run import symmetric_activations
        from edgekit.compress.qat import qat

        ptq = int8_validation(built)
        if ptq is None:
            return built
        floor = base_accuracy - request.max_accuracy_drop / 100
        built.report["qat"] = {"ptq_validation": ptq, "floor": floor, "tried": False}
        if ptq >= floor or time.monotonic() + request.final_finetune_s + BUILD_RESERVE_S > deadline:
            return built
        progress(f"post-training int8 is {100 * (base_accuracy - ptq):.2f} pt below the original on validation: "
                 f"quantization-aware fine-tuning ({request.final_finetune_s:.0f} s at most)")
        module = copy.deepcopy(built.module)
        report = qat(module, teacher, final_inputs(splits), method=built.report.get("calibration", {}).get("method") or "mse",
                     symmetric=symmetric_activations(target), weight_bits=target.quantization.weight_bits,
                     seconds=request.final_finetune_s, objective=objective)
        trained = _build_and_measure(state, loaded, teacher, samples, splits, request, budget_ms, target,
                                     built.folder / "qat", built_precisions, progress, distill, deploy, DeployRequest,
                                     accuracy, anchor, finetuned=module)
        after = int8_validation(trained)
        kept = after is not None and after > ptq
        record = {"ptq_validation": ptq, "qat_validation": after, "floor": floor, "tried": True, "kept": kept,
                  "folder": "qat", **report.as_dict()}
        progress(f"quantization-aware fine-tuning: validation {ptq:.4f} → {after:.4f} ({'kept' if kept else 'not kept'})")
        chosen = trained if kept else built
        chosen.report["qat"] = record
        write_json(chosen.folder / "report.json", chosen.report)
        return chosen

    if (target.local or device is not None) and model_cost.table.measured and not trials.evaluations():
        _calibrate_cost(model_cost, run_dir, loaded, teacher, samples, space, plan, reference, request, progress,
                        precisions_of, deploy, DeployRequest, anchor)

    walk = greedy.Walk(
        groups=list(space.groups) if "prune" in request.moves else [], choices=dict(space.choices),
        with_keep=lambda c, g, k: dataclasses.replace(c, keep={**c.keep, g: k}),
        prune=lambda m, keep: prune(m, example, keep, like=space.groups), predict=predict, finetune=finetune, accuracy=accuracy,
        precision_moves=(lambda c: fixed_point.moves(c, list(space.layers), target)) if fixed else (
            lambda c: [(dataclasses.replace(c, precision={**c.precision, layer: "int8"}), layer)
                       for layer in costly if c.precision.get(layer) != "int8"]),
        penalty=(lambda c: fixed_point.penalty(c, analysis)) if fixed else (
            lambda c: sum(loss for layer, loss in costly.items() if c.precision.get(layer) == "int8")),
        moves=() if fixed else structure_moves(space, request.moves), active=lambda c, g: spaces.active(g, c))
    start_candidate = spaces.Candidate(keep={}, precision=dict(plan.layers), default_precision=plan.default)
    latency, memory = predict(start_candidate, teacher)
    state = start = greedy.State(start_candidate, teacher, latency, memory, base_accuracy)
    budget_ms = request.latency_budget_ms
    if budget_ms is None:  # --speedup: the original's latency on the anchor's scale (or predicted), divided
        original_float = spaces.Candidate(keep={}, precision={}, default_precision=plan.default if fixed
                                          else sensitivity.float_precision(target))
        budget_ms = (anchor.p50_ms if anchor else predict(original_float, teacher)[0]) / request.speedup
        progress(f"budget: {budget_ms:.4f} ms, {request.speedup:g}× faster than the original "
                 f"({'measured' if anchor else 'predicted'})")
    # on an FPGA the memory is the part's block RAM: a design that overflows it does not fit
    budget = greedy.Budget(budget_ms, request.memory_budget_mb or (design.capacity_mb() if design else None))
    floor_ms = greedy.smallest_latency(walk, state)
    if floor_ms > budget.latency_ms:
        progress(f"warning: the smallest model the space allows is predicted at {floor_ms:.3f} ms, above the budget: "
                 "the device measurement will tell (the cost model learns from it)")
    floor = base_accuracy - (request.max_accuracy_drop + WALK_SLACK_PT) / 100
    rounds: list[Round] = []
    walk_budget = budget
    for number in range(MAX_ROUNDS):
        progress(f"round {number + 1}: walking to {walk_budget.latency_ms:.3f} ms (predicted)")
        state, stopped = strategy.run(walk, state if strategy is greedy else start, walk_budget, trials, deadline=walk_deadline,
                                      max_trials=request.trials, floor_accuracy=floor, progress=progress)
        if rounds and state.candidate.as_dict() == rounds[-1].candidate:  # the walk could not move: measured already
            progress(f"round {number + 1}: no further move within the accuracy floor ({stopped})")
            break
        built = _build_and_measure(state, loaded, teacher, samples, splits, request, budget_ms, target, run_dir / f"round-{number + 1}",
                                   built_precisions, progress, distill, deploy, DeployRequest, accuracy, anchor)
        built = with_qat(built, state)
        measured = anchor.judge(built.report) if anchor else None
        round_ = Round(walk_budget.latency_ms, stopped, state.candidate.as_dict(), state.latency_ms,
                       measured.ms if measured else None, built.validation, measured.as_dict() if measured else None,
                       built.report)
        if measured:
            progress(f"round {number + 1}: measured {measured.ms:.3f} ms ({measured.ratio:.2f}× the original timed beside it, "
                     f"raw p50 {measured.raw_p50_ms:.3f} ms), budget {budget_ms:.3f} ms")
        rounds.append(round_)
        if round_.measured_ms is not None:
            layers = graph.layer_table(built.onnx_path)
            model_cost.observe(layers, built.precisions, round_.measured_ms, default=state.candidate.default_precision,
                               candidate=state.candidate.key())
            trials.record(Evaluation("measured:" + state.candidate.key(), state.candidate.as_dict(), round_.measured_ms,
                                     "measured", state.accuracy, {"round": number + 1, "predicted_ms": state.latency_ms}))
        if round_.measured_ms is None or round_.measured_ms <= budget_ms * (1 - MEASURED_MARGIN) or not (stopped == "met" or strategy is nsga) or time.monotonic() > walk_deadline:
            break
        # Missed on the device. The cost model has learnt from the measurement; predict the candidate again
        # and go on from it, aiming below the budget by what the model still misses it by, or by its error.
        state.latency_ms, state.memory_mb = predict(state.candidate, state.module)
        walk_budget = dataclasses.replace(walk_budget, latency_ms=tightened(
            budget_ms, state.latency_ms, round_.measured_ms, model_cost.errors()))
    result = _result(request, target, backend_name, loaded, splits, teacher, base_accuracy, rounds, trials, model_cost,
                     started, run_dir, space, anchor, budget_ms)
    result["skipped"] = list(walk.skipped.values())  # moves whose model did not run or export, and why
    result["warnings"] = list(samples.warnings)
    if design is not None:
        result["cost_model"] = {"source": "edgekit's estimate of the hls4ml design (edgekit/backends/hls4ml_estimate.py), predicted",
                                "widths": analysis}
    write_json(run_dir / "search.json", result)
    write_search_report(run_dir, result)
    return result


def chosen_round(rounds: list[Round], budget_ms: float) -> int:
    """The round that ships: the last one measured (or, off the device, predicted) within the budget, the
    last round if none is. Rounds only tighten, so it has the most room under the budget: a candidate a
    hair under it (MEASURED_MARGIN) may be over it at the next measurement."""
    judged = [r.measured_ms if r.measured_ms is not None else r.predicted_ms for r in rounds]
    within = [i for i, ms in enumerate(judged) if ms <= budget_ms]
    return within[-1] if within else len(rounds) - 1


def tightened(budget_ms: float, predicted_ms: float, measured_ms: float, errors: list[dict]) -> float:
    """The walk's next latency goal after a candidate predicted at `predicted_ms` (by the model that has
    now seen it) measured `measured_ms` > budget: below the budget by the model's remaining miss on that
    candidate, and at least by its typical error on this search's measured candidates (within 3-15 %)."""
    typical = float(np.clip(np.median([abs(e["error"]) for e in errors]) if errors else TIGHTEN_MARGIN[1], *TIGHTEN_MARGIN))
    return budget_ms * min(1.0 - typical, predicted_ms / measured_ms)


def _calibrate_cost(model_cost, run_dir: Path, loaded, teacher, samples, space, plan: PrecisionPlan, reference,
                    request: SearchRequest, progress, precisions_of, deploy, DeployRequest, anchor: Anchor | None) -> None:
    """Teach the cost model this model on this device before the walk relies on it: the whole-model fp32
    and all-int8 latencies the sensitivity analysis measured side by side, and one build of the model
    pruned to half, measured (three whole-model points fit the calibration; the closed loop adds more).
    Every point is on the anchor's scale, the one the budget is judged on."""
    import json

    saved = run_dir / "sensitivity" / sensitivity.FILE
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
    half = space.uniform(0.5, plan.default)
    if not half.keep:
        return
    progress("measuring the model pruned to half, to calibrate the cost model on this device")
    from edgekit.compress.prune import prune
    from edgekit.search.space import example_tensors

    module = prune(teacher, example_tensors(loaded), dict(half.keep))
    candidate = dataclasses.replace(half, precision=dict(plan.layers))
    pruned = dataclasses.replace(loaded, module=module, spec=f"{loaded.spec}#{candidate.key()}")
    folder = run_dir / "cost-probe"
    folder.mkdir(exist_ok=True)
    onnx_path = graph.export_onnx(pruned, folder / "model.onnx")
    names = evaluate.rename_by_order(reference, graph.layer_table(onnx_path))
    probe_plan = PrecisionPlan(plan.default, {ours: plan.precision_of(theirs) for ours, theirs in names.items()})
    report = deploy(DeployRequest(target=request.target, out=folder, backend=request.backend, targets_dir=request.targets_dir,
                                  calibration=CalibrationOptions(method="mse", equalization="off"), settings=request.settings,
                                  device=request.device, devices_file=request.devices_file),
                    model=pruned, samples=samples, plan=probe_plan, beside=anchor.beside() if anchor else None)
    measured = anchor.judge(report) if anchor else None
    if measured:
        fast = evaluate.fast_layer_table(module, loaded)
        model_cost.observe(fast, precisions_of(candidate, fast), measured.ms, default=plan.default,
                           candidate=candidate.key())


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


def _width_plan(design, teacher, loaded, splits, target, space, validation_ref, run_dir: Path,
                progress: Callable[[str], None]) -> tuple[PrecisionPlan, dict]:
    """A fixed-point target starts from the widest width at which the whole model fits the part (the most
    accurate design there is); the walk narrows layers, priced by each layer's width sensitivity, and
    prunes. Saved in the run directory, reused on resume."""
    import json

    saved = run_dir / "width_sensitivity.json"
    if saved.exists():
        analysis = json.loads(saved.read_text())
    else:
        progress("simulating each layer in each narrower width (fixed point, in PyTorch)")
        analysis = fixed_point.sensitivity(teacher, loaded, splits.calibration.inputs, splits.validation,
                                           list(space.layers), target, validation_ref)
        analysis["start"] = fixed_point.widest_fitting(design, teacher, len(space.layers))
        write_json(saved, analysis)
    progress(f"starting from {analysis['start']} everywhere: the widest width whose design fits {target.name}")
    return PrecisionPlan(analysis["start"]), analysis


def _device_table(target, backend_name: str, device):
    """The cost model's lookup table timed on the device through its agent (None: the usual table)."""
    if device is None:
        return None
    from edgekit.latency_table import LatencyTable

    return LatencyTable(target, backend_name, device=device)


def _precision_plan(loaded, onnx_path: Path, splits, target, backend_name: str, run_dir: Path, request: SearchRequest,
                    progress: Callable[[str], None], device=None, metric: Metric | None = None) -> tuple[PrecisionPlan, dict | None]:
    """int8 for the layers the sensitivity analysis finds harmless and faster on the target (saved in
    sensitivity/, reused on resume); the target's float precision elsewhere. Also the analysis."""
    from edgekit.calibrate.run import calibrate

    if "int8" not in target.precisions.supported:
        return PrecisionPlan(sensitivity.float_precision(target)), None
    folder = run_dir / "sensitivity"
    saved = folder / sensitivity.FILE
    if saved.exists():
        analysis = sensitivity.load_sensitivity(saved, onnx_path)
        return sensitivity.mixed_plan(analysis), analysis
    progress("measuring each layer's int8 sensitivity on the target")
    calibration = calibrate(onnx_path, splits.calibration, target, PrecisionPlan("int8"), folder, request.calibration,
                            metric=metric)
    analysis = sensitivity.analyse(onnx_path, splits, target, folder, options=request.calibration,
                                   threads=request.settings.threads, backend_name=backend_name,
                                   settings=request.settings, calibration=calibration, device=device, metric=metric)
    return sensitivity.mixed_plan(analysis), analysis


@dataclass
class _Built:
    report: dict
    onnx_path: Path
    precisions: dict[str, str]  # by the built ONNX's layer names
    validation: float  # accuracy of the distilled model on the validation split (fp32 weights)
    module: object = None  # the distilled module that was built
    folder: Path | None = None


def _build_and_measure(state, loaded, teacher, samples, splits, request: SearchRequest, budget_ms: float, target, folder: Path,
                       built_precisions, progress, distill, deploy, DeployRequest, accuracy, anchor: Anchor | None,
                       finetuned=None) -> _Built:
    """Distil the chosen candidate longer, then deploy it like any model: export, calibrate its plan,
    build with the real backend, measure on the device (or predict where the device is not here)."""
    import copy

    candidate = state.candidate
    module = copy.deepcopy(finetuned if finetuned is not None else state.module)
    if finetuned is None and (candidate.keep or candidate.structural):  # unchanged: the original weights are the best
        progress(f"distilling the chosen candidate ({request.final_finetune_s:.0f} s at most)")
        distill(module, teacher, final_inputs(splits), seconds=request.final_finetune_s, seed=0)
    pruned = dataclasses.replace(loaded, module=module.eval(), spec=f"{loaded.spec}#{candidate.key()}")
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = graph.export_onnx(pruned, folder / "model.onnx")
    precisions = built_precisions(candidate, module, graph.layer_table(onnx_path))
    plan = PrecisionPlan(candidate.default_precision, precisions)
    flash = None
    if request.flash_budget_mb is not None:
        flash = _shrink(pruned, teacher, samples, splits, plan, request, folder, progress, deploy, DeployRequest)
        module = flash.module
        pruned = dataclasses.replace(pruned, module=module.eval(), spec=f"{pruned.spec}#{flash.action.as_dict()}")
        onnx_path = graph.export_onnx(pruned, folder / "model.onnx")
    on_device = target.local or request.device is not None
    progress("building and measuring the candidate on the device" if on_device else "building the candidate")
    deploy_request = DeployRequest(target=request.target, out=folder, backend=request.backend,
                                   latency_budget_ms=budget_ms, measure=on_device or _checkable(request, target),
                                   calibration=request.calibration, settings=request.settings, metric=request.metric,
                                   targets_dir=request.targets_dir, device=request.device, devices_file=request.devices_file)
    report = deploy(deploy_request, model=pruned, samples=samples, plan=plan,  # deploy splits it the same way
                    beside=anchor.beside() if anchor else None, original=loaded)
    if flash is not None:
        from edgekit.compress.shrink import stored_size

        size = stored_size(_shipped_files(report, folder))
        report["flash"] = {"budget_mb": request.flash_budget_mb, "compressed_mb": round(size.compressed_mb, 6),
                           "raw_mb": round(size.raw_mb, 6), "met": size.compressed_mb <= request.flash_budget_mb,
                           "kind": "measured", "how": "the shipped engine's files, each xz-compressed",
                           "action": flash.action.as_dict(), "ladder": [
                               {**step.action.as_dict(), "compressed_mb": round(step.compressed_mb, 6), "met": step.met}
                               for step in flash.steps]}
    return _Built(report, onnx_path, precisions, accuracy(module), module, folder)


def _checkable(request: SearchRequest, target) -> bool:
    """Off the device, whether this machine runs the built model's arithmetic (LiteRT, hls4ml's C
    simulation, the Q/DQ ONNX in ONNX Runtime): deploy then reports its test accuracy."""
    from edgekit.backends.base import get_backend
    from edgekit.errors import MissingRuntime

    try:
        return get_backend(request.backend or target.backend.name).available(target).check
    except MissingRuntime:
        return False


def final_inputs(splits) -> dict:
    """What the chosen candidate is distilled on: the calibration and validation inputs, unlabelled (the
    teacher labels them). Once the candidate is chosen the validation split has done its job, and with a
    few hundred samples the amount of data decides how well the distilled model generalises (ResNet-like
    on digits, pruned to half: test 96.0 % distilled on the calibration split alone, 98.5 % on both, as
    the original). The test split stays unseen; the reported validation accuracy is then no longer held out."""
    calibration, validation = splits.calibration.inputs, splits.validation.inputs
    return {name: np.concatenate([calibration[name], validation[name]]) for name in calibration}


def _shipped_files(report: dict, folder: Path) -> list[Path]:
    """The files a bundle ships: the engine's, or the ONNX handed to the vendor's tool where nothing was built here."""
    files = [folder / name for name in report.get("artifacts", {}).get("engine_files", [])]
    return files or [folder / report["artifacts"].get("qdq_onnx", "model.onnx")]


def _shrink(pruned, teacher, samples, splits, plan: PrecisionPlan, request: SearchRequest, folder: Path, progress,
            deploy, DeployRequest):
    """Sparsity and weight sharing until the shipped files, built as they will ship (the candidate's
    plan, calibrated), fit `--flash-budget-mb` compressed: each rung of the ladder built and measured."""
    from edgekit.compress.shrink import shrink_to_flash

    tries = itertools.count(1)

    def export(module) -> list[Path]:
        sub = folder / "flash" / f"try-{next(tries)}"
        model = dataclasses.replace(pruned, module=module.eval(), spec=f"{pruned.spec}#flash")
        report = deploy(DeployRequest(target=request.target, out=sub, backend=request.backend, measure=False,
                                      calibration=CalibrationOptions(method="mse", equalization="off"),
                                      targets_dir=request.targets_dir), model=model, samples=samples, plan=plan)
        return _shipped_files(report, sub)

    progress(f"shrinking the stored model to {request.flash_budget_mb} MB (sparsity, then weight sharing)")
    return shrink_to_flash(pruned.module, teacher, splits.calibration.inputs, export, request.flash_budget_mb,
                           seconds=request.final_finetune_s)


def _result(request: SearchRequest, target, backend_name: str, loaded, splits, teacher, base_accuracy: float,
            rounds: list[Round], trials: Trials, model_cost, started: float, run_dir: Path, space,
            anchor: Anchor | None, budget_ms: float) -> dict:
    shipped = chosen_round(rounds, budget_ms)
    last = rounds[shipped]
    test_ref = evaluate.outputs(teacher, splits.test, loaded)
    metric = choose_metric(request.metric, splits.validation.labels, [test_ref[:1]])
    original_test = evaluate.score(test_ref, splits.test, test_ref, metric)
    accuracy = last.report.get("accuracy") or {}
    on_test = accuracy.get("metric") or {}
    test = on_test["value"] * metric.points / 100 if on_test.get("name") == metric.name else (
        accuracy.get("test") if accuracy.get("test") is not None else accuracy.get("agreement"))
    latency = last.report.get("latency_ms", {})
    judged = last.measured_ms if last.measured_ms is not None else latency.get("p50")
    groups = {g.name: g.channels for g in space.groups}
    flash = last.report.get("flash")
    return {
        "target": target.name, "backend": backend_name, "model": loaded.spec, "strategy": request.strategy,
        "budget": {"latency_ms": budget_ms, "speedup": request.speedup, "memory_mb": request.memory_budget_mb,
                   "max_accuracy_drop_pt": request.max_accuracy_drop,
                   "flash_mb": request.flash_budget_mb,
                   "met": judged is not None and judged <= budget_ms and (flash is None or flash["met"]),
                   "judged_on": "measured" if last.measured_ms is not None else "predicted"},
        "flash": flash,
        "qat": last.report.get("qat"),  # post-training vs quantization-aware int8 on validation, when int8 fell short
        "latency_ms": {"predicted": last.predicted_ms, "measured": last.measured_ms, "side_by_side": last.measurement,
                       "original_ms": anchor.p50_ms if anchor else None, "how": None if anchor is None else (
                           "measured: the candidate timed side by side with the original float engine, in alternating "
                           "rounds; measured = median per-round ratio × the original's p50 when the search started "
                           "(drift of the device between the two divides out); report = the candidate's own timing"),
                       "report": latency},
        "metric": {**metric.describe(), "scale": "accuracy values below are the metric × points / 100"},
        "accuracy": {"validation": last.accuracy_validation, "validation_original": base_accuracy,
                     # the final distillation trains on the validation inputs (unlabelled): the test split is the held-out figure
                     "validation_held_out": not (last.candidate["keep"] or last.candidate.get("drop")
                                                 or last.candidate.get("rank")),
                     "within_max_drop": last.accuracy_validation >= base_accuracy - request.max_accuracy_drop / 100 - 1e-9,
                     "test": test, "test_original": original_test,
                     "test_drop_pt": None if test is None else round(100 * (original_test - test), 3)},
        "chosen": {"keep": {g: f"{last.candidate['keep'].get(g, c)}/{c}" for g, c in groups.items()},
                   "moves": chosen_moves(space, last.candidate),
                   "precision": last.report.get("precision", {}).get("planned"),
                   "candidate": last.candidate, "run_dir": str(run_dir / f"round-{shipped + 1}"
                                                                  / ("qat" if (last.report.get("qat") or {}).get("kept") else ""))},
        "rounds": [{k: v for k, v in dataclasses.asdict(r).items() if k != "report"} |
                   {"cost_model_error": None if r.measured_ms is None else round(r.predicted_ms / r.measured_ms - 1, 4)}
                   for r in rounds],
        "cost_model": {"source": model_cost.source, "calibration": model_cost.calibration, "errors": model_cost.errors(),
                       "mean_abs_error": model_cost.mean_abs_error()},
        "trials": len(trials), "pareto": [dataclasses.asdict(e) for e in trials.pareto()],
        "trials_all": [{"key": e.key, "latency_ms": e.latency_ms, "latency_kind": e.latency_kind, "accuracy": e.accuracy}
                       for e in trials.evaluations()],
        "seconds": round(time.monotonic() - started, 1), "run_dir": str(run_dir),
    }
