"""The default strategy, after NetAdapt (Yang et al., 2018): shrink the model one latency slice at a time.

Each step proposes, for every prunable group, the largest kept channel count (from the group's
aligned choices) that saves at least one slice of predicted latency; each proposal is pruned from
the current model, fine-tuned briefly by distillation from the original, and scored on the validation
split. Precision moves compete in the same step: a layer the sensitivity analysis kept float because
int8 costs it accuracy (though int8 is faster) may go int8, its accuracy estimated from its measured
sensitivity (the weights do not change, so nothing is fine-tuned). The step keeps the proposal that
loses the least accuracy per millisecond saved. Steps go on until the candidate's predicted latency
(and memory) meet the budget. When every proposal of a step falls below the accuracy floor, the step is
proposed again with half the slice (milder cuts cost less accuracy) before the walk gives up.

Every proposal is a trial in Optuna storage (edgekit.search.study). The walk is deterministic given
its evaluations (seeded pruning and fine-tuning), so a resumed search replays the steps from storage,
redoing only the pruning and short fine-tune of each accepted proposal, not the evaluations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from edgekit.search.study import Evaluation, Trials

STEPS = 6  # the latency gap to the budget is closed in about this many slices
MIN_SLICE = 0.02  # … but a slice is at least this fraction of the current latency


@dataclass
class State:
    """Where the walk stands: the candidate, its (fine-tuned) module, predicted latency and memory,
    validation accuracy."""

    candidate: object  # edgekit.search.space.Candidate
    module: object
    latency_ms: float
    memory_mb: float
    accuracy: float
    step: int = 0


@dataclass(frozen=True)
class Budget:
    latency_ms: float
    memory_mb: float | None = None

    def met(self, latency_ms: float, memory_mb: float) -> bool:
        return latency_ms <= self.latency_ms and (self.memory_mb is None or memory_mb <= self.memory_mb)


class Walk:
    """The moves the strategy needs, given by the search loop (so this module stays about the walk)."""

    def __init__(self, *, groups: list, choices: dict[str, tuple[int, ...]],
                 with_keep: Callable, prune: Callable, predict: Callable, finetune: Callable, accuracy: Callable,
                 precision_moves: Callable = lambda candidate: [], penalty: Callable = lambda candidate: 0.0) -> None:
        self.groups, self.choices = groups, choices
        self.with_keep = with_keep  # (candidate, group name, keep) → candidate
        self.prune = prune  # (module, {group: keep}) → pruned copy
        self.predict = predict  # (candidate, module) → (latency ms, memory MB), predicted
        self.finetune = finetune  # (module) → None, in place, bounded in time
        self.accuracy = accuracy  # (module) → validation accuracy of its float weights
        self.precision_moves = precision_moves  # (candidate) → [(candidate with one layer's precision changed, layer)]
        self.penalty = penalty  # (candidate) → accuracy its precisions are estimated to cost beyond the float weights'

    def score(self, candidate, module) -> float:
        """Validation accuracy of the module, less what the candidate's precision moves are estimated to cost."""
        return self.accuracy(module) - self.penalty(candidate)


def kept(candidate, group) -> int:
    """The channels `group` keeps in `candidate` (all of them unless pruned)."""
    return candidate.keep.get(group.name, group.channels)


def _proposal(walk: Walk, state: State, group, slice_ms: float):
    """The largest aligned keep of `group` below its current one saving ≥ slice_ms (else the smallest)."""
    current = kept(state.candidate, group)
    smaller = sorted((k for k in walk.choices[group.name] if k < current), reverse=True)
    for keep in smaller:
        candidate = walk.with_keep(state.candidate, group.name, keep)
        module = walk.prune(state.module, {group.name: keep})
        latency, memory = walk.predict(candidate, module)
        if state.latency_ms - latency >= slice_ms or keep == smaller[-1]:
            return candidate, module, latency, memory
    return None


def run(walk: Walk, start: State, budget: Budget, trials: Trials, *, deadline: float, max_trials: int,
        floor_accuracy: float, progress: Callable[[str], None] = lambda _: None) -> tuple[State, str]:
    """Walk from `start` until the budget is met; returns the last accepted state and why it stopped
    ("met", "time", "trials", "accuracy": the next step would fall below floor_accuracy, "exhausted")."""
    state = start
    gap = max(state.latency_ms - budget.latency_ms, 0.0)
    slice_ms = max(gap / STEPS, MIN_SLICE * state.latency_ms)
    while not budget.met(state.latency_ms, state.memory_mb):
        if time.monotonic() > deadline:
            return state, "time"
        proposals = []
        for group in walk.groups:
            made = _proposal(walk, state, group, slice_ms)
            if made is None:
                continue
            candidate, module, latency, memory = made
            evaluation = trials.get(candidate.key())
            if evaluation is None:
                if len(trials) >= max_trials:
                    return state, "trials"
                walk.finetune(module)
                evaluation = trials.record(Evaluation(candidate.key(), candidate.as_dict(), latency, "predicted",
                                                      walk.score(candidate, module),
                                                      {"step": state.step + 1, "group": group.name,
                                                       "keep": kept(candidate, group), "memory_mb": memory}))
                progress(f"step {state.step + 1}: {group.name} → {kept(candidate, group)} channels: "
                         f"{latency:.3f} ms predicted, accuracy {evaluation.accuracy:.4f}")
            else:
                module = None  # replayed from storage: rebuilt only if chosen
            # the latency predicted now, not the stored one: the cost model may have learnt since (closed loop)
            saved = state.latency_ms - latency if state.latency_ms > budget.latency_ms else state.memory_mb - memory
            if saved > 0:
                proposals.append((max(state.accuracy - evaluation.accuracy, 0.0) / saved, -evaluation.accuracy,
                                  group.name, group, candidate, module, evaluation, latency, memory))
        for candidate, layer in walk.precision_moves(state.candidate):  # same weights: nothing to fine-tune
            latency, memory = walk.predict(candidate, state.module)
            evaluation = trials.get(candidate.key())
            if evaluation is None:
                if len(trials) >= max_trials:
                    return state, "trials"
                evaluation = trials.record(Evaluation(
                    candidate.key(), candidate.as_dict(), latency, "predicted", _moved(walk, state, candidate),
                    {"step": state.step + 1, "layer": layer, "precision": candidate.precision.get(layer),
                     "accuracy_from": "sensitivity", "memory_mb": memory}))
                progress(f"step {state.step + 1}: {layer} → {candidate.precision.get(layer)}: {latency:.3f} ms predicted, "
                         f"accuracy {evaluation.accuracy:.4f} (estimated from its sensitivity)")
            saved = state.latency_ms - latency if state.latency_ms > budget.latency_ms else state.memory_mb - memory
            if saved > 0:
                proposals.append((max(state.accuracy - evaluation.accuracy, 0.0) / saved, -evaluation.accuracy,
                                  layer, None, candidate, state.module, evaluation, latency, memory))
        if not proposals:
            return state, "exhausted"
        allowed = [p for p in proposals if p[6].accuracy >= floor_accuracy]
        if not allowed:  # every move would cost more accuracy than allowed: try milder cuts before giving up
            if slice_ms / 2 < MIN_SLICE * state.latency_ms:
                return state, "accuracy"
            slice_ms /= 2
            progress(f"step {state.step + 1}: every move falls below the accuracy floor; trying cuts of "
                     f"{slice_ms:.3f} ms")
            continue
        *_, group, candidate, module, evaluation, latency, memory = min(allowed, key=lambda p: p[:3])
        if module is None:  # replay: the same seeded pruning and fine-tune give the same weights (group is not None:
            # a precision move carries the current module)
            module = walk.prune(state.module, {group.name: kept(candidate, group)})
            walk.finetune(module)
        state = State(candidate, module, latency, memory, evaluation.accuracy, state.step + 1)
    return state, "met"


def _moved(walk: Walk, state: State, candidate) -> float:
    """A precision move's accuracy: the state's, less the move's estimated cost (same weights)."""
    return state.accuracy - (walk.penalty(candidate) - walk.penalty(state.candidate))


def smallest_latency(walk: Walk, start: State) -> float:
    """The predicted latency of the smallest model the space allows (is the budget within reach?)."""
    smallest = start.candidate
    for group in walk.groups:
        smallest = walk.with_keep(smallest, group.name, min(walk.choices[group.name]))
    module = walk.prune(start.module, {g.name: kept(smallest, g) for g in walk.groups})
    return walk.predict(smallest, module)[0]
