"""search.json: what the search chose and how it was judged, the rounds, the cost model, the trials.

`SearchResult` is built once, here, from the rounds; `as_dict()` is search.json's content (FORMAT 2:
`latency_ms.measured` became `judged_ms`, next to the shipped candidate's own `measured_p50`, and each
round's `measured_ms` became `judged_ms`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from edgekit.budget import BudgetVerdict, judge, judge_latency
from edgekit.metrics import choose_metric
from edgekit.search import evaluate
from edgekit.search.build import ClosedLoop
from edgekit.search.moves import chosen_moves
from edgekit.search.rounds import Round
from edgekit.search.study import Trials

FORMAT = 2  # search.json's format: 2 renamed latency_ms.measured (and rounds' measured_ms) to judged_ms

_SIDE_BY_SIDE = ("judged: the candidate timed side by side with the original float engine, in alternating rounds; "
                 "judged_ms = median per-round ratio × the original's p50 when the search started (drift of the "
                 "device between the two divides out); measured_p50 and report = the candidate's own timing")


@dataclass(frozen=True)
class SearchBudget:
    """What was asked, and the verdict on the round that ships."""

    latency_ms: float
    speedup: float | None
    memory_mb: float | None
    max_accuracy_drop_pt: float
    flash_mb: float | None
    latency: BudgetVerdict  # the latency judged on the device (judged_ms), or off it predicted (the report's p50)
    flash_met: bool | None = None  # the shipped files' measured size against flash_mb (search.json → flash)

    @property
    def met(self) -> bool:
        return self.latency.met and self.flash_met is not False

    @property
    def verdict(self) -> str:
        """"met", "uncertain" (a prediction met it, its bound did not) or "missed" (edgekit.budget)."""
        return "missed" if self.flash_met is False else self.latency.verdict

    @property
    def judged_on(self) -> str:
        return self.latency.kind

    def as_dict(self) -> dict:
        return {"latency_ms": self.latency_ms, "speedup": self.speedup, "memory_mb": self.memory_mb,
                "max_accuracy_drop_pt": self.max_accuracy_drop_pt, "flash_mb": self.flash_mb,
                "met": self.met, "verdict": self.verdict, "judged_on": self.judged_on,
                "latency": self.latency.as_dict()}


@dataclass(frozen=True)
class SearchLatency:
    """The shipped round's latency: predicted by the cost model, judged beside the original, measured alone."""

    predicted: float
    judged_ms: float | None  # median per-round ratio to the original × its p50 at the start; None off the device
    measured_p50: float | None  # the candidate's own p50 in its report, where it was measured
    side_by_side: dict | None  # the timing behind judged_ms (edgekit.search.anchor.Measurement)
    original_ms: float | None  # the original's p50 when the search started
    how: str | None
    report: dict  # the candidate's latency in its deploy report

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SearchAccuracy:
    validation: float
    validation_original: float
    # the final distillation trains on the validation inputs (unlabelled): the test split is the held-out figure
    validation_held_out: bool
    within_max_drop: bool
    test: float | None
    test_original: float
    test_drop_pt: float | None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Chosen:
    keep: dict[str, str]  # group → "kept/original"
    moves: list[dict]
    precision: dict[str, str] | None
    candidate: dict
    run_dir: str  # the shipped round's run directory

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SearchResult:
    target: str
    backend: str
    model: str | None
    strategy: str
    budget: SearchBudget
    flash: dict | None
    qat: dict | None  # post-training vs quantization-aware int8 on validation, when int8 fell short
    latency: SearchLatency
    metric: dict
    accuracy: SearchAccuracy
    chosen: Chosen
    rounds: tuple[Round, ...]
    cost_model: dict
    trials: int
    pareto: list[dict]
    trials_all: list[dict]
    seconds: float
    run_dir: str
    skipped: tuple[dict, ...] = ()  # moves whose model did not run or export, and why
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """search.json's content."""
        return {
            "format": FORMAT, "target": self.target, "backend": self.backend, "model": self.model,
            "strategy": self.strategy, "budget": self.budget.as_dict(), "flash": self.flash, "qat": self.qat,
            "latency_ms": self.latency.as_dict(), "metric": self.metric, "accuracy": self.accuracy.as_dict(),
            "chosen": self.chosen.as_dict(),
            "rounds": [{f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name != "report"}
                       | {"cost_model_error": r.cost_model_error} for r in self.rounds],
            "cost_model": self.cost_model, "trials": self.trials, "pareto": self.pareto, "trials_all": self.trials_all,
            "seconds": self.seconds, "run_dir": self.run_dir, "skipped": list(self.skipped), "warnings": list(self.warnings),
        }


def search_result(loop: ClosedLoop, rounds: list[Round], trials: Trials) -> SearchResult:
    """The round that ships (chosen_round's, finished) with its test accuracy next to the original's, every round,
    the cost model's errors and every trial."""
    ctx, request, budget_ms = loop.ctx, loop.ctx.request, loop.budget_ms
    last = next(r for r in rounds if r.ships)
    metric, accuracy = _accuracy(loop, last)
    latency = _latency(loop, last)
    verdict = (judge("latency_ms", budget_ms, latency.judged_ms, "measured") if latency.judged_ms is not None
               else judge_latency("latency_ms", budget_ms, {**latency.report, "kind": "predicted"}))
    flash = last.report.flash
    budget = SearchBudget(budget_ms, request.speedup, request.memory_budget_mb, request.max_accuracy_drop,
                          request.flash_budget_mb, verdict, None if flash is None else flash["met"])
    groups = {g.name: g.channels for g in loop.original.space.groups}
    chosen = Chosen({g: f"{last.candidate['keep'].get(g, c)}/{c}" for g, c in groups.items()},
                    chosen_moves(loop.original.space, last.candidate), last.report.precision.get("planned"),
                    last.candidate, str(ctx.run_dir / last.shipped))
    model_cost = loop.pricing.model_cost
    return SearchResult(
        ctx.target.name, ctx.backend_name, ctx.loaded.spec, request.strategy, budget, flash, last.report.qat,
        latency, metric, accuracy, chosen, tuple(rounds),
        {"source": model_cost.source, "calibration": model_cost.calibration, "errors": model_cost.errors(),
         "mean_abs_error": model_cost.mean_abs_error()},
        len(trials), [dataclasses.asdict(e) for e in trials.pareto()],
        [{"key": e.key, "latency_ms": e.latency_ms, "latency_kind": e.latency_kind, "accuracy": e.accuracy}
         for e in trials.evaluations()],
        round(time.monotonic() - ctx.started, 1), str(ctx.run_dir))


def _latency(loop: ClosedLoop, last: Round) -> SearchLatency:
    anchor, report = loop.original.anchor, last.report.latency_ms
    return SearchLatency(last.predicted_ms, last.judged_ms, report.get("p50") if report.get("kind") == "measured" else None,
                         last.measurement, anchor.p50_ms if anchor else None, None if anchor is None else _SIDE_BY_SIDE,
                         report)


def accuracy_warnings(accuracy: SearchAccuracy, max_drop_pt: float) -> list[str]:
    """The shipped engine's test figure (the one held-out figure) against --max-accuracy-drop: the walk judged
    on the validation split, which chose its moves and which the final distillation trains on, so it flatters."""
    if accuracy.test_drop_pt is None or accuracy.test_drop_pt <= max_drop_pt:
        return []
    return [f"on the held-out test split the shipped engine lost {accuracy.test_drop_pt:.2f} pt, more than "
            f"--max-accuracy-drop {max_drop_pt:g} (the validation figure the search judged by chose the moves and "
            "is distilled on: with a few hundred samples it flatters); give more data or a smaller --max-accuracy-drop"]


def _accuracy(loop: ClosedLoop, last: Round) -> tuple[dict, SearchAccuracy]:
    """The metric's description and the shipped round's accuracy: validation (the walk's), test (the
    built engine's, against the original model's test figure)."""
    ctx, request, base = loop.ctx, loop.ctx.request, loop.original.accuracy
    test_ref = evaluate.outputs(ctx.teacher, ctx.splits.test, ctx.loaded)
    metric = choose_metric(request.metric, ctx.splits.validation.labels, [test_ref[:1]])
    original_test = evaluate.score(test_ref, ctx.splits.test, test_ref, metric)
    accuracy = last.report.accuracy or {}
    on_test = accuracy.get("metric") or {}
    test = on_test["value"] * metric.points / 100 if on_test.get("name") == metric.name else (
        accuracy.get("test") if accuracy.get("test") is not None else accuracy.get("agreement"))
    return ({**metric.describe(), "scale": "accuracy values below are the metric × points / 100"}, SearchAccuracy(
        last.accuracy_validation, base,
        not (last.candidate["keep"] or last.candidate.get("drop") or last.candidate.get("rank")),
        last.accuracy_validation >= base - request.max_accuracy_drop / 100 - 1e-9,
        test, original_test, None if test is None else round(100 * (original_test - test), 3)))
