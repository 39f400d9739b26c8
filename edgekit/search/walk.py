"""The walk as the strategies see it (edgekit.search.greedy.Walk), made from the search's context: its
moves, how a proposal is scored, where it starts and the budget it aims at."""

from __future__ import annotations

import dataclasses

from edgekit.compress.distill import DistillSettings, distill
from edgekit.compress.prune import prune
from edgekit.precision import sensitivity
from edgekit.search import fixed_point, greedy
from edgekit.search import space as spaces
from edgekit.search.context import Original, SearchContext, validation_accuracy
from edgekit.search.moves import structure_moves
from edgekit.search.pricing import Pricing
from edgekit.search.start_plan import StartPlan

CONSOLIDATION = 4  # a walk stuck at its accuracy floor fine-tunes its current model this many proposals' time


def make_walk(ctx: SearchContext, original: Original, start: StartPlan, pricing: Pricing) -> greedy.Walk:
    """Channel pruning (when --moves allows it), the structural moves, and the precision moves: int8 for
    the layers whose sensitivity kept them float, or narrower widths on a fixed-point target."""
    request, space, target, fixed = ctx.request, original.space, ctx.target, start.design is not None
    example = spaces.example_tensors(ctx.loaded)
    teacher, costly, analysis = ctx.teacher, start.costly, start.analysis
    settings = DistillSettings(seconds=request.step_finetune_s, seed=0, objective=original.objective)
    longer = dataclasses.replace(settings, seconds=CONSOLIDATION * request.step_finetune_s)
    channels = greedy.Channels(
        groups=list(space.groups) if "prune" in request.moves else [], choices=dict(space.choices),
        with_keep=lambda c, g, k: dataclasses.replace(c, keep={**c.keep, g: k}),
        prune=lambda m, keep: prune(m, example, keep, like=space.groups), active=lambda c, g: spaces.active(g, c))
    scoring = greedy.Scoring(
        predict=pricing.predict, finetune=lambda module: distill(module, teacher, ctx.splits.calibration.inputs, settings),
        accuracy=lambda module: validation_accuracy(ctx, original, module),
        consolidate=lambda module: distill(module, teacher, ctx.splits.calibration.inputs, longer),
        penalty=(lambda c: fixed_point.penalty(c, analysis)) if fixed else (
            lambda c: sum(loss for layer, loss in costly.items() if c.precision.get(layer) == "int8")))
    return greedy.Walk(
        channels, scoring,
        precision_moves=(lambda c: fixed_point.moves(c, list(space.layers), target)) if fixed else (
            lambda c: [(dataclasses.replace(c, precision={**c.precision, layer: "int8"}), layer)
                       for layer in costly if c.precision.get(layer) != "int8"]),
        moves=() if fixed else structure_moves(space, request.moves))


def first_state(ctx: SearchContext, original: Original, start: StartPlan, pricing: Pricing) -> greedy.State:
    """The unpruned model in the starting plan: where the walk sets out from."""
    candidate = spaces.Candidate(keep={}, precision=dict(start.plan.layers), default_precision=start.plan.default)
    latency, memory = pricing.predict(candidate, ctx.teacher)
    return greedy.State(candidate, ctx.teacher, latency, memory, original.accuracy)


def budget(ctx: SearchContext, original: Original, start: StartPlan, pricing: Pricing) -> greedy.Budget:
    """--latency-budget-ms, or --speedup: the original's latency on the anchor's scale (or predicted),
    divided; and --memory-budget-mb, or on an FPGA the part's block RAM (a design that overflows it does
    not fit)."""
    request, anchor, plan, design = ctx.request, original.anchor, start.plan, start.design
    budget_ms = request.latency_budget_ms
    if budget_ms is None:
        original_float = spaces.Candidate(keep={}, precision={}, default_precision=plan.default if design is not None
                                          else sensitivity.float_precision(ctx.target))
        budget_ms = (anchor.p50_ms if anchor else pricing.predict(original_float, ctx.teacher)[0]) / request.speedup
        ctx.progress(f"budget: {budget_ms:.4f} ms, {request.speedup:g}× faster than the original "
                     f"({'measured' if anchor else 'predicted'})")
    return greedy.Budget(budget_ms, request.memory_budget_mb or (design.capacity_mb() if design else None))
