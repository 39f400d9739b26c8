"""The closed loop's rounds: walk to the budget on the cost model, build and measure the candidate, and
after a miss, let the cost model learn, tighten the walk's budget by the miss and walk on.

On the device a round builds the walk's model as it stands: its weights do not change its graph, so the
device's verdict is the same before the long distillation as after it, and a round that misses costs a
build, not a distillation. Only the round that ships is then distilled (for the time the limit leaves),
built again and measured (`finish`). On the 96x96 MobileNetV2-like at 0.6x fp32, three rounds that each
distilled for 60 s before their build left no time to distil the one that shipped for longer."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from edgekit import graph
from edgekit.budget import BudgetVerdict, judge
from edgekit.deploy.result import DeployReport
from edgekit.search import greedy, nsga
from edgekit.search.build import ClosedLoop, build_candidate
from edgekit.search.qat_fallback import with_qat
from edgekit.search.study import Evaluation, Trials

MAX_ROUNDS = 4  # closed-loop rounds: build, measure, tighten
# A proposal's accuracy after its short distillation understates what the chosen candidate's longer one
# recovers (measured on the ResNet-like: 0.979 after 10 s, 0.988 after 30 s, 0.992 unpruned), so the
# walk may go this far below the allowed drop (and by its score's noise, `walk_floor`); the final
# accuracy is measured and reported as it is.
WALK_SLACK_PT = 3.0
COUNTED = ("top1", "agreement")  # metrics that are a fraction of samples counted right: binomial noise
TIGHTEN_MARGIN = (0.03, 0.15)  # after a miss, the walk aims this far below the budget at least / at most
# A candidate measured this close under the budget is tightened once more (the last round that met the
# budget ships): the side-by-side ratio's run-to-run spread on this host, 10 repeats of one pair of
# engines while the absolute p50 moved by 50 %: standard deviation 0.7 %, largest deviation 1.7 %.
MEASURED_MARGIN = 0.02


@dataclass
class Round:
    """One closed-loop round: the candidate built and what the device said."""

    walk_budget_ms: float
    stopped: str
    candidate: dict
    predicted_ms: float
    judged_ms: float | None  # measured, on the anchor's scale (edgekit.search.anchor): what the budget is judged on
    accuracy_validation: float
    measurement: dict | None = None  # the side-by-side timing behind judged_ms
    report: DeployReport | None = None  # the shipped candidate's deploy report
    bound_factor: float | None = None  # off the device: the prediction's bound (edgekit.anchored), None if unbounded
    shipped: str = ""  # the build's folder under the run directory: round-N, or round-N/distilled, …/qat
    ships: bool = False  # the round whose build ships (chosen_round's, finished)
    as_walked: dict | None = None  # on the device, once the round that ships was distilled: its walked build's figures

    @property
    def cost_model_error(self) -> float | None:
        """predicted / judged − 1, where the device judged the candidate."""
        return None if self.judged_ms is None else round(self.predicted_ms / self.judged_ms - 1, 4)

    def verdict(self, budget_ms: float) -> BudgetVerdict:
        """The latency budget against this round: its judged latency, or off the device its predicted one."""
        if self.judged_ms is not None:
            return judge("latency_ms", budget_ms, self.judged_ms, "measured")
        factor = self.bound_factor
        return judge("latency_ms", budget_ms, self.predicted_ms, "predicted",
                     high=None if factor is None else self.predicted_ms * factor, unbounded=factor is None)


def run_rounds(loop: ClosedLoop, walk: greedy.Walk, start: greedy.State, budget: greedy.Budget,
               trials: Trials) -> list[Round]:
    """Up to MAX_ROUNDS rounds; a round that measured within the budget (or could not be measured, or
    whose walk did not reach the budget) ends the loop."""
    ctx, request, budget_ms, anchor = loop.ctx, loop.ctx.request, loop.budget_ms, loop.original.anchor
    progress, model_cost = ctx.progress, loop.pricing.model_cost
    strategy = nsga if request.strategy == "nsga" else greedy
    floor_ms = greedy.smallest_latency(walk, start)
    if floor_ms > budget.latency_ms:
        progress(f"warning: the smallest model the space allows is predicted at {floor_ms:.3f} ms, above the budget: "
                 "the device measurement will tell (the cost model learns from it)")
    floor = walk_floor(loop.original.metric, loop.original.accuracy, request.max_accuracy_drop, len(ctx.splits.validation))
    rounds: list[Round] = []
    made: list[tuple] = []  # each round's state and build: the one that ships is finished from them
    walk_budget, state = budget, start
    factor = None if anchor else loop.pricing.bound_factor(start.candidate, start.module)
    if factor is not None:  # off the device a prediction meets the budget only if its upper bound does: aim below
        walk_budget = dataclasses.replace(budget, latency_ms=budget.latency_ms / factor)
        progress(f"off the device: aiming at the budget ÷ {factor:.2f}, the bound of the target's predictions")
    for number in range(MAX_ROUNDS):
        progress(f"round {number + 1}: walking to {walk_budget.latency_ms:.3f} ms (predicted)")
        state, stopped = strategy.run(walk, state if strategy is greedy else start, walk_budget, trials,
                                      deadline=ctx.walk_deadline, max_trials=request.trials, floor_accuracy=floor,
                                      progress=progress)
        if rounds and state.candidate.as_dict() == rounds[-1].candidate:  # the walk could not move: measured already
            progress(f"round {number + 1}: no further move within the accuracy floor ({stopped})")
            break
        folder = ctx.run_dir / f"round-{number + 1}"
        # as walked; a pruned one is built again by finish before it ships: no flash ladder here
        built = (build_candidate(loop, state, folder, finetuned=state.module, shrink=not state.candidate.pruned) if anchor
                 else with_qat(loop, build_candidate(loop, state, folder), state))
        measured = anchor.judge(built.report) if anchor else None
        round_ = Round(walk_budget.latency_ms, stopped, state.candidate.as_dict(), state.latency_ms,
                       measured.ms if measured else None, built.validation, measured.as_dict() if measured else None,
                       built.report, factor, str(built.folder.relative_to(ctx.run_dir)))
        made.append((state, built))
        if measured:
            progress(f"round {number + 1}: judged at {measured.ms:.3f} ms ({measured.ratio:.2f}× the original timed beside it, "
                     f"raw p50 {measured.raw_p50_ms:.3f} ms), budget {budget_ms:.3f} ms")
        rounds.append(round_)
        if round_.judged_ms is not None:
            layers = graph.layer_table(built.onnx_path)
            model_cost.observe(layers, built.precisions, round_.judged_ms, default=state.candidate.default_precision,
                               candidate=state.candidate.key())
            trials.record(Evaluation("measured:" + state.candidate.key(), state.candidate.as_dict(), round_.judged_ms,
                                     "measured", state.accuracy, {"round": number + 1, "predicted_ms": state.latency_ms}))
        if round_.judged_ms is None or round_.judged_ms <= budget_ms * (1 - MEASURED_MARGIN) or not (stopped == "met" or strategy is nsga) or time.monotonic() > ctx.walk_deadline:
            break
        # Missed on the device. The cost model has learnt from the measurement; predict the candidate again
        # and go on from it, aiming below the budget by what the model still misses it by, or by its error.
        state.latency_ms, state.memory_mb = loop.pricing.predict(state.candidate, state.module)
        walk_budget = dataclasses.replace(walk_budget, latency_ms=tightened(
            budget_ms, state.latency_ms, round_.judged_ms, model_cost.errors()))
    shipped = chosen_round(rounds, budget_ms)
    rounds[shipped] = finish(loop, rounds[shipped], *made[shipped]) if anchor else dataclasses.replace(
        rounds[shipped], ships=True)
    return rounds


def walk_floor(metric, accuracy: float, max_drop_pt: float, samples: int) -> float:
    """The lowest validation score a walk's proposal may have: the allowed drop and WALK_SLACK_PT below the
    original's, and for a metric counted per sample, by the noise of a score there: a proposal truly at
    that floor scores below it less than 5 % of the time (1.645 standard errors of a fraction measured on
    the validation split: 243 digits at 94 %, 2.5 pt). On the 96x96 MobileNetV2-like, walks stopped at
    their floor at 0.55× and 0.65× fp32 where the candidates shipped from proposals at 93-95 % ended at or
    above the original's test accuracy."""
    floor = accuracy - (max_drop_pt + WALK_SLACK_PT) / metric.points
    if metric.name not in COUNTED:
        return floor
    p = min(max(floor, 0.0), 1.0)
    return floor - 1.645 * np.sqrt(p * (1 - p) / max(samples, 1))


def finish(loop: ClosedLoop, round_: Round, state: greedy.State, walked) -> Round:
    """On the device, the round that ships: its candidate distilled (edgekit.search.build.final_seconds),
    built in `distilled/` beside the walked model's build, given quantization-aware fine-tuning where int8
    costs too much (edgekit.search.qat_fallback), and measured again. Both builds are the same graph, so
    the verdict rests on both timings, their mean (one alone moves by its spread: 0.58× then 0.60× on the
    96x96 MobileNetV2-like); the walked build's stays in `as_walked`. An unpruned candidate keeps the
    original weights: its walked build is the one that ships."""
    distilled = build_candidate(loop, state, walked.folder / "distilled") if state.candidate.pruned else walked
    built = with_qat(loop, distilled, state)
    if built is walked:
        return dataclasses.replace(round_, report=built.report, ships=True)  # with its QAT record
    measured = loop.original.anchor.judge(built.report)
    measurement = _both(measured, round_.measurement) if measured else round_.measurement
    judged = measurement["ms"] if measurement else round_.judged_ms
    if measured:
        loop.ctx.progress(f"the distilled build: timed at {measured.ms:.3f} ms ({measured.ratio:.2f}× the original "
                          f"timed beside it); judged at {judged:.3f} ms with the walked build's timing, budget "
                          f"{loop.budget_ms:.3f} ms")
    return dataclasses.replace(
        round_, judged_ms=judged, accuracy_validation=built.validation, measurement=measurement, report=built.report,
        shipped=str(built.folder.relative_to(loop.ctx.run_dir)), ships=True,
        as_walked={"folder": round_.shipped, "judged_ms": round_.judged_ms, "validation": round_.accuracy_validation})


def _both(distilled, walked: dict | None) -> dict:
    """The distilled build's side-by-side timing, its ratio (and ms) the mean of both builds' (the same graph)."""
    if walked is None:
        return distilled.as_dict()
    ratio = 0.5 * (distilled.ratio + walked["ratio"])
    return {**distilled.as_dict(), "ms": round(0.5 * (distilled.ms + walked["ms"]), 6), "ratio": ratio,
            "ratios": {"walked": walked["ratio"], "distilled": distilled.ratio}}


def chosen_round(rounds: list[Round], budget_ms: float) -> int:
    """The round that ships: the last one measured (or, off the device, predicted) within the budget, the
    last round if none is. Rounds only tighten, so it has the most room under the budget: a candidate a
    hair under it (MEASURED_MARGIN) may be over it at the next measurement."""
    within = [i for i, r in enumerate(rounds) if r.verdict(budget_ms).met]
    return within[-1] if within else len(rounds) - 1


def tightened(budget_ms: float, predicted_ms: float, measured_ms: float, errors: list[dict]) -> float:
    """The walk's next latency goal after a candidate predicted at `predicted_ms` (by the model that has
    now seen it) measured `measured_ms` > budget: below the budget by the model's remaining miss on that
    candidate, and at least by its typical error on this search's measured candidates (within 3-15 %)."""
    typical = float(np.clip(np.median([abs(e["error"]) for e in errors]) if errors else TIGHTEN_MARGIN[1], *TIGHTEN_MARGIN))
    return budget_ms * min(1.0 - typical, predicted_ms / measured_ms)
