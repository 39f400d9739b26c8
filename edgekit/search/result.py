"""search.json: what the search chose and how it was judged, the rounds, the cost model, the trials."""

from __future__ import annotations

import dataclasses
import time

from edgekit.metrics import choose_metric
from edgekit.search import evaluate
from edgekit.search.build import ClosedLoop
from edgekit.search.moves import chosen_moves
from edgekit.search.rounds import Round, chosen_round
from edgekit.search.study import Trials

_SIDE_BY_SIDE = ("measured: the candidate timed side by side with the original float engine, in alternating "
                 "rounds; measured = median per-round ratio × the original's p50 when the search started "
                 "(drift of the device between the two divides out); report = the candidate's own timing")


def search_result(loop: ClosedLoop, rounds: list[Round], trials: Trials) -> dict:
    """search.json's content: the round that ships (chosen_round) with its test accuracy next to the
    original's, every round, the cost model's errors and every trial."""
    ctx, request, budget_ms, anchor = loop.ctx, loop.ctx.request, loop.budget_ms, loop.original.anchor
    shipped = chosen_round(rounds, budget_ms)
    last = rounds[shipped]
    test_ref = evaluate.outputs(ctx.teacher, ctx.splits.test, ctx.loaded)
    metric = choose_metric(request.metric, ctx.splits.validation.labels, [test_ref[:1]])
    original_test = evaluate.score(test_ref, ctx.splits.test, test_ref, metric)
    accuracy = last.report.get("accuracy") or {}
    on_test = accuracy.get("metric") or {}
    test = on_test["value"] * metric.points / 100 if on_test.get("name") == metric.name else (
        accuracy.get("test") if accuracy.get("test") is not None else accuracy.get("agreement"))
    latency = last.report.get("latency_ms", {})
    judged = last.measured_ms if last.measured_ms is not None else latency.get("p50")
    groups = {g.name: g.channels for g in loop.original.space.groups}
    flash = last.report.get("flash")
    base_accuracy, model_cost = loop.original.accuracy, loop.pricing.model_cost
    return {
        "target": ctx.target.name, "backend": ctx.backend_name, "model": ctx.loaded.spec, "strategy": request.strategy,
        "budget": {"latency_ms": budget_ms, "speedup": request.speedup, "memory_mb": request.memory_budget_mb,
                   "max_accuracy_drop_pt": request.max_accuracy_drop,
                   "flash_mb": request.flash_budget_mb,
                   "met": judged is not None and judged <= budget_ms and (flash is None or flash["met"]),
                   "judged_on": "measured" if last.measured_ms is not None else "predicted"},
        "flash": flash,
        "qat": last.report.get("qat"),  # post-training vs quantization-aware int8 on validation, when int8 fell short
        "latency_ms": {"predicted": last.predicted_ms, "measured": last.measured_ms, "side_by_side": last.measurement,
                       "original_ms": anchor.p50_ms if anchor else None, "how": None if anchor is None else _SIDE_BY_SIDE,
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
                   "moves": chosen_moves(loop.original.space, last.candidate),
                   "precision": last.report.get("precision", {}).get("planned"),
                   "candidate": last.candidate, "run_dir": str(ctx.run_dir / f"round-{shipped + 1}"
                                                                  / ("qat" if (last.report.get("qat") or {}).get("kept") else ""))},
        "rounds": [{k: v for k, v in dataclasses.asdict(r).items() if k != "report"} |
                   {"cost_model_error": None if r.measured_ms is None else round(r.predicted_ms / r.measured_ms - 1, 4)}
                   for r in rounds],
        "cost_model": {"source": model_cost.source, "calibration": model_cost.calibration, "errors": model_cost.errors(),
                       "mean_abs_error": model_cost.mean_abs_error()},
        "trials": len(trials), "pareto": [dataclasses.asdict(e) for e in trials.pareto()],
        "trials_all": [{"key": e.key, "latency_ms": e.latency_ms, "latency_kind": e.latency_kind, "accuracy": e.accuracy}
                       for e in trials.evaluations()],
        "seconds": round(time.monotonic() - ctx.started, 1), "run_dir": str(ctx.run_dir),
    }
