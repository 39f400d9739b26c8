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

The stages live beside this module: request (what is asked), context (set-up and the original model),
start_plan, pricing, cost_probe, walk, rounds, build (and qat_fallback), result (search.json).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from edgekit.search.build import ClosedLoop, final_inputs
from edgekit.search.context import measure_original, open_search, open_trials
from edgekit.search.cost_probe import calibrate_cost
from edgekit.search.pricing import pricing_for
from edgekit.search.request import STRATEGIES, SearchRequest
from edgekit.search.result import SearchResult, accuracy_warnings, search_result
from edgekit.search.rounds import Round, chosen_round, run_rounds, tightened
from edgekit.search.start_plan import start_plan
from edgekit.search.walk import budget, first_state, make_walk
from edgekit.search_report import write_search_report
from edgekit.util import write_json

__all__ = ["STRATEGIES", "Round", "SearchRequest", "SearchResult", "chosen_round", "final_inputs", "search", "tightened"]


def search(request: SearchRequest, progress: Callable[[str], None] = lambda _: None) -> SearchResult:
    """Run the search and the closed loop; returns what it chose and how it was judged (its `as_dict()` is
    search.json's content, written to the run directory with report.html)."""
    ctx = open_search(request, progress)
    trials = open_trials(ctx)
    original = measure_original(ctx)
    start = start_plan(ctx, original)
    pricing = pricing_for(ctx, original, start.design)
    if ctx.measurer.reaches(ctx.target) and pricing.model_cost.table.measured and not trials.evaluations():
        calibrate_cost(ctx, original, start.plan, pricing)
    walk = make_walk(ctx, original, start, pricing)
    state = first_state(ctx, original, start, pricing)
    aim = budget(ctx, original, start, pricing)
    loop = ClosedLoop(ctx, original, pricing, aim.latency_ms)
    rounds = run_rounds(loop, walk, state, aim, trials)
    result = search_result(loop, rounds, trials)
    result = dataclasses.replace(result, skipped=tuple(walk.skipped.values()), warnings=(
        *ctx.samples.warnings, *accuracy_warnings(result.accuracy, request.max_accuracy_drop)))
    if start.design is not None:
        result = dataclasses.replace(result, cost_model={
            "source": "edgekit's estimate of the hls4ml design (edgekit/backends/hls4ml_estimate.py), predicted",
            "widths": start.analysis})
    content = result.as_dict()
    write_json(ctx.run_dir / "search.json", content)
    write_search_report(ctx.run_dir, content)
    return result
