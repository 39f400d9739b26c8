"""The default strategy, after NetAdapt (Yang et al., 2018): shrink the model one latency slice at a time.

Each step proposes, for every prunable group, the largest kept channel count (from the group's
aligned choices) that saves at least one slice of predicted latency; each proposal is pruned from
the current model and scored on the validation split as it is, and the SHORTLIST that lose the least
accuracy per millisecond saved are fine-tuned briefly by distillation from the original and scored again
(a step of a MobileNet offers some twenty cuts: fine-tuning each for five seconds took the whole time
limit in three steps). Precision moves compete in the same step: a layer the sensitivity analysis kept
float because int8 costs it accuracy (though int8 is faster) may go int8, its accuracy estimated from its
measured sensitivity (the weights do not change, so nothing is fine-tuned). The step keeps the proposal that
loses the least accuracy per millisecond saved. Steps go on until the candidate's predicted latency
(and memory) meet the budget. When every proposal of a step falls below the accuracy floor, the current
model is first consolidated, as NetAdapt does with its long-term fine-tune: distilled longer (the walk's
short fine-tunes leave a model well short of what it recovers; on the 96x96 MobileNetV2-like, proposals at
93-95 % validation that the chosen candidate's longer distillation took to 98 %), scored again, and the
step proposed again from it (unless the consolidation scores lower on validation: then it is set aside);
a model whose step still falls below the floor is proposed again with half the slice (milder cuts cost
less accuracy) before the walk gives up.

Every proposal is a trial in Optuna storage (edgekit.search.study). The walk is deterministic given
its evaluations (seeded pruning and fine-tuning), so a resumed search replays the steps from storage,
redoing only the pruning and short fine-tune of each accepted proposal, each consolidation, and each
step's scores before fine-tuning (one validation pass per cut, not stored), not the fine-tuned evaluations.
After a consolidation the same candidate grows from other weights, so its trials are keyed apart.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgekit.errors import BadInput, Failure
from edgekit.search.study import Evaluation, Trials

STEPS = 6  # the latency gap to the budget is closed in about this many slices
SHORTLIST = 4  # structural proposals per step fine-tuned and scored: those losing least before fine-tuning
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
    consolidations: int = 0  # along the walk so far: the trials after each are keyed apart (other weights)
    consolidated: bool = False  # this state's module has been consolidated since it was accepted


@dataclass(frozen=True)
class Budget:
    latency_ms: float
    memory_mb: float | None = None

    def met(self, latency_ms: float, memory_mb: float) -> bool:
        return latency_ms <= self.latency_ms and (self.memory_mb is None or memory_mb <= self.memory_mb)


@dataclass(frozen=True)
class Channels:
    """Channel pruning as the walk sees it: the prunable groups, each one's aligned kept counts, and how a
    kept count is applied to a candidate and to a module."""

    groups: list
    choices: dict[str, tuple[int, ...]]
    with_keep: Callable  # (candidate, group name, keep) → candidate
    prune: Callable  # (module, {group: keep}) → pruned copy
    active: Callable = lambda candidate, group: True  # (candidate, group) → False once the group's layers were all dropped


@dataclass(frozen=True)
class Scoring:
    """How a proposal is priced and judged: predicted cost, a short fine-tune, then validation accuracy."""

    predict: Callable  # (candidate, module) → (latency ms, memory MB), predicted
    finetune: Callable  # (module) → None, in place, bounded in time
    accuracy: Callable  # (module) → validation accuracy of its float weights
    penalty: Callable = lambda candidate: 0.0  # (candidate) → accuracy its precisions are estimated to cost beyond the float weights'
    consolidate: Callable | None = None  # (module) → None, in place: a longer fine-tune, when a step finds no move above the floor


class Walk:
    """The moves the strategy needs, given by the search loop (so this module stays about the walk)."""

    def __init__(self, channels: Channels, scoring: Scoring, *, precision_moves: Callable = lambda candidate: [],
                 moves: tuple = ()) -> None:
        self.channels, self.scoring = channels, scoring
        self.precision_moves = precision_moves  # (candidate) → [(candidate with one layer's precision changed, layer)]
        self.moves = tuple(moves)  # Move: whole blocks dropped, layers factorized (beside the groups' channels)
        self.skipped: dict[str, dict] = {}  # candidate key → the move and why it could not be built

    def skip(self, candidate, move: str, reason: str) -> None:
        """A move whose model does not run or export: left out with the reason (search.json), the walk goes on."""
        self.skipped.setdefault(candidate.key(), {"key": candidate.key(), "move": move, "reason": reason})

    def score(self, candidate, module) -> float:
        """Validation accuracy of the module, less what the candidate's precision moves are estimated to cost."""
        return self.scoring.accuracy(module) - self.scoring.penalty(candidate)


@dataclass(frozen=True)
class Move:
    """A structural move beside channel pruning, on one layer or block: `values(candidate)` are the
    settings below the current one, ascending (a rank ladder; (0,) for dropping); `candidate(c, v)` and
    `module(m, v)` make the moved candidate and, from the current module, its model."""

    kind: str  # "rank" or "drop"
    name: str  # the layer or block
    values: Callable
    candidate: Callable
    module: Callable


def kept(candidate, group) -> int:
    """The channels `group` keeps in `candidate` (all of them unless pruned)."""
    return candidate.keep.get(group.name, group.channels)


def _proposal(walk: Walk, state: State, values: list[int], make: Callable, build: Callable, label: Callable,
              slice_ms: float, current: int | None = None):
    """The largest of `values` (ascending, all below the current setting) saving ≥ slice_ms, else the
    smallest. Predicted latency falls with the setting (channels kept, rank), so it is found by bisection:
    a prediction exports the candidate for its layer table (0.1 s for a CNN, 1 to 2 s for a BERT through
    torch.export), and an FFN offers dozens of aligned widths. Given the `current` setting (predicted at
    state.latency_ms), each probe is guessed by linear interpolation between the nearest settings known
    either side of the answer (Illinois-weighted, and plain bisection once three probes fail to halve the
    bracket): the same answer, in 3 predictions instead of 8 or 9 for a 1024-wide FFN whose latency is
    linear in its width, about 5 on a kinked roofline, at worst 4 over bisection's (on a staircase)."""
    if not values:
        return None

    def made(value):
        candidate = make(value)
        try:  # the candidate must run and export before it is timed
            module = build(value)
            return (candidate, module, *walk.scoring.predict(candidate, module))
        except (Failure, BadInput) as err:  # BadInput: a cut the current model cannot take (pruned below a
            # rank, a group a structural move reshaped), refused by the pruner or the factorizer
            walk.skip(candidate, label(value), str(err))
            return None

    best = made(values[0])
    if best is None or state.latency_ms - best[2] < slice_ms:
        return best  # even the smallest saves less than a slice (or cannot be built)
    goal = state.latency_ms - slice_ms
    low, high = 0, len(values) - 1  # values[low] saves a slice; is a larger one enough too?
    below, above = (values[0], best[2]), (None if current is None else (current, state.latency_ms))
    last, widths = None, []  # the side the previous probe fell on (True: it saved a slice); the bracket's widths
    while low < high:
        widths.append(high - low)
        if len(widths) > 3 and widths[-1] > widths[-4] / 2:  # three guesses did not halve it: bisect from here
            current = None
        guess = current is not None and above is not None
        middle = _guess(values, low, high, below, above, goal) if guess else (low + high + 1) // 2
        tried = made(values[middle])
        saves = tried is not None and state.latency_ms - tried[2] >= slice_ms
        if saves:
            best, low, below = tried, middle, (values[middle], tried[2])
            if last is True and above is not None:  # Illinois: the stale far side weighs half
                above = (above[0], goal + (above[1] - goal) / 2)
        else:
            high, above = middle - 1, None if tried is None else (values[middle], tried[2])
            if last is False:
                below = (below[0], goal - (goal - below[1]) / 2)
        last = saves
    return best


def _guess(values: list[int], low: int, high: int, below: tuple, above: tuple, goal: float) -> int:
    """The index in (low, high] of the largest setting whose latency, interpolated linearly between the
    (setting, latency) points `below` (within the goal) and `above` (over it), is within `goal`."""
    (x0, y0), (x1, y1) = below, above
    if y1 <= y0:  # not rising: nothing to interpolate on
        return (low + high + 1) // 2
    x = x0 + (goal - y0) * (x1 - x0) / (y1 - y0)
    return min(max(bisect.bisect_right(values, x) - 1, low + 1), high)


def _group_proposal(walk: Walk, state: State, group, slice_ms: float):
    current = kept(state.candidate, group)
    channels = walk.channels
    return _proposal(walk, state, sorted(k for k in channels.choices[group.name] if k < current),
                     lambda keep: channels.with_keep(state.candidate, group.name, keep),
                     lambda keep: channels.prune(state.module, {group.name: keep}),
                     lambda keep: f"{group.name} → {keep}", slice_ms, current)


def _move_proposal(walk: Walk, state: State, move: Move, slice_ms: float):
    return _proposal(walk, state, list(move.values(state.candidate)), lambda v: move.candidate(state.candidate, v),
                     lambda v: move.module(state.module, v), lambda v: f"drop {move.name}" if move.kind == "drop" else f"rank {move.name} → {v}", slice_ms)


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
        for name, what, attrs, candidate, module, latency, memory in _shortlist(walk, state, budget, slice_ms, progress):
            group = what if "group" in attrs else None
            value = kept(candidate, group) if group is not None else _setting(candidate, attrs)
            rebuild = (functools.partial(walk.channels.prune, state.module, {group.name: value}) if group is not None
                       else functools.partial(what.module, state.module, value))
            evaluation = trials.get(_key(state, candidate))
            if evaluation is None:
                if len(trials) >= max_trials:
                    return state, "trials"
                walk.scoring.finetune(module)
                evaluation = trials.record(Evaluation(_key(state, candidate), candidate.as_dict(), latency, "predicted",
                                                      walk.score(candidate, module),
                                                      {"step": state.step + 1, **attrs, "keep" if group is not None
                                                       else "value": value, "memory_mb": memory}))
                shown = f"{value} channels" if group is not None else (
                    "dropped" if attrs["move"] == "drop" else f"rank {value}")
                progress(f"step {state.step + 1}: {name} → {shown}: {latency:.3f} ms predicted, "
                         f"accuracy {evaluation.accuracy:.4f}")
            else:
                module = None  # replayed from storage: rebuilt only if chosen
            # the latency predicted now, not the stored one: the cost model may have learnt since (closed loop)
            saved = _saved(state, budget, latency, memory)
            if saved > 0:
                proposals.append((_lost(state, evaluation) / saved, -saved, -evaluation.accuracy,
                                  name, rebuild, candidate, module, evaluation, latency, memory))
        for candidate, layer in walk.precision_moves(state.candidate):  # same weights: nothing to fine-tune
            latency, memory = walk.scoring.predict(candidate, state.module)
            evaluation = trials.get(_key(state, candidate))
            if evaluation is None:
                if len(trials) >= max_trials:
                    return state, "trials"
                evaluation = trials.record(Evaluation(
                    _key(state, candidate), candidate.as_dict(), latency, "predicted", _moved(walk, state, candidate),
                    {"step": state.step + 1, "layer": layer, "precision": candidate.precision.get(layer),
                     "accuracy_from": "sensitivity", "memory_mb": memory}))
                progress(f"step {state.step + 1}: {layer} → {candidate.precision.get(layer)}: {latency:.3f} ms predicted, "
                         f"accuracy {evaluation.accuracy:.4f} (estimated from its sensitivity)")
            saved = _saved(state, budget, latency, memory)
            if saved > 0:
                proposals.append((_lost(state, evaluation) / saved, -saved, -evaluation.accuracy,
                                  layer, None, candidate, state.module, evaluation, latency, memory))
        if not proposals:
            return state, "exhausted"
        allowed = [p for p in proposals if p[7].accuracy >= floor_accuracy]
        if not allowed:  # every move would cost more accuracy than allowed: consolidate, then try milder cuts
            if walk.scoring.consolidate is not None and not state.consolidated and state.step:  # (step 0: the original)
                consolidated = _consolidate(walk, state, trials, progress)
                if consolidated is not None:
                    state = consolidated
                    continue
                # it scored lower: the same model would propose the same step again, so go on to milder cuts
                state = dataclasses.replace(state, consolidated=True)
            if slice_ms / 2 < MIN_SLICE * state.latency_ms:
                return state, "accuracy"
            slice_ms /= 2
            progress(f"step {state.step + 1}: every move falls below the accuracy floor; trying cuts of "
                     f"{slice_ms:.3f} ms")
            continue
        *_, rebuild, candidate, module, evaluation, latency, memory = min(allowed, key=lambda p: p[:4])
        if module is None:  # replay: the same seeded pruning and fine-tune give the same weights (a precision
            # move carries the current module)
            module = rebuild()
            walk.scoring.finetune(module)
        state = State(candidate, module, latency, memory, evaluation.accuracy, state.step + 1, state.consolidations)
    return state, "met"


def _key(state: State, candidate) -> str:
    """A proposal's trial key: its candidate's, marked with the walk's consolidations so far (after one,
    the same candidate is cut from other weights and scores otherwise)."""
    return candidate.key() if not state.consolidations else f"{candidate.key()}~{state.consolidations}"


def _consolidate(walk: Walk, state: State, trials: Trials, progress: Callable) -> State | None:
    """The state's model fine-tuned longer and scored again (a trial of its own, so the report shows it;
    a resumed walk redoes the fine-tune, which is seeded, and reads the score from storage). A longer
    fine-tune on the calibration split may score lower on validation (the 96x96 MobileNetV2-like: 4 of 5
    consolidations in one search, 0.9588 → 0.9383 at worst): then None, the model stays as it was, and
    only milder cuts are left to try."""
    module = copy.deepcopy(state.module)  # never the caller's (the first state's module is the original)
    walk.scoring.consolidate(module)
    key = f"consolidated:{state.candidate.key()}~{state.consolidations + 1}"  # _key, had it been kept
    evaluation = trials.get(key) or trials.record(Evaluation(
        key, state.candidate.as_dict(), state.latency_ms, "predicted", walk.score(state.candidate, module),
        {"step": state.step + 1, "consolidated": state.consolidations + 1, "accuracy_before": state.accuracy,
         "memory_mb": state.memory_mb}))
    if evaluation.accuracy < state.accuracy:
        progress(f"step {state.step + 1}: no move above the accuracy floor; the current model, fine-tuned longer, "
                 f"scores {evaluation.accuracy:.4f} (was {state.accuracy:.4f}): kept as it was")
        return None
    progress(f"step {state.step + 1}: no move above the accuracy floor; the current model, fine-tuned longer, "
             f"scores {evaluation.accuracy:.4f} (was {state.accuracy:.4f}): proposing again from it")
    return State(state.candidate, module, state.latency_ms, state.memory_mb, evaluation.accuracy, state.step,
                 state.consolidations + 1, consolidated=True)


def _saved(state: State, budget: Budget, latency: float, memory: float) -> float:
    """What a move saves: predicted latency until the latency budget is met, then memory."""
    return state.latency_ms - latency if state.latency_ms > budget.latency_ms else state.memory_mb - memory


def _shortlist(walk: Walk, state: State, budget: Budget, slice_ms: float, progress: Callable) -> list[tuple]:
    """This step's structural proposals that save something, each scored before fine-tuning: the SHORTLIST
    losing the least accuracy per millisecond saved (a cut that costs nothing ranks by what it saves)."""
    options = [(group.name, group, {"group": group.name}) for group in walk.channels.groups
               if walk.channels.active(state.candidate, group)]
    options += [(move.name, move, {"move": move.kind, "layer": move.name}) for move in walk.moves]
    made = []
    for name, what, attrs in options:
        proposal = (_group_proposal(walk, state, what, slice_ms) if "group" in attrs
                    else _move_proposal(walk, state, what, slice_ms))
        if proposal is None:
            continue
        candidate, module, latency, memory = proposal
        saved = _saved(state, budget, latency, memory)
        if saved > 0:
            raw = walk.score(candidate, module)
            made.append(((_lost(state, raw) / saved, -saved, -raw, name), (name, what, attrs, *proposal)))
    made.sort(key=lambda scored: scored[0])
    if len(made) > SHORTLIST:
        progress(f"step {state.step + 1}: {len(made)} cuts scored before fine-tuning; fine-tuning the {SHORTLIST} "
                 f"losing least per ms saved ({', '.join(proposal[0] for _, proposal in made[:SHORTLIST])})")
    return [proposal for _, proposal in made[:SHORTLIST]]


LOSS_RESOLUTION = 1e-4  # accuracy differences below this (0.01 pt) are noise: lossless moves rank by what they save


def _lost(state: State, evaluation: Evaluation | float) -> float:
    """The accuracy a move costs, rounded to LOSS_RESOLUTION (so that among moves that cost nothing, the one
    saving the most goes first, not the one whose accuracy is higher by float noise)."""
    accuracy = getattr(evaluation, "accuracy", evaluation)  # an Evaluation, or a score before fine-tuning
    return max(round((state.accuracy - accuracy) / LOSS_RESOLUTION) * LOSS_RESOLUTION, 0.0)


def _setting(candidate, attrs: dict) -> int:
    """A structural move's value in `candidate`: the rank, or 0 for a dropped block."""
    return 0 if attrs["move"] == "drop" else candidate.rank[attrs["layer"]]


def _moved(walk: Walk, state: State, candidate) -> float:
    """A precision move's accuracy: the state's, less the move's estimated cost (same weights)."""
    return state.accuracy - (walk.scoring.penalty(candidate) - walk.scoring.penalty(state.candidate))


def smallest_latency(walk: Walk, start: State) -> float:
    """The predicted latency of the smallest model the space allows (is the budget within reach?)."""
    channels, smallest = walk.channels, start.candidate
    for group in channels.groups:
        smallest = channels.with_keep(smallest, group.name, min(channels.choices[group.name]))
    module = channels.prune(start.module, {g.name: kept(smallest, g) for g in channels.groups})
    return walk.scoring.predict(smallest, module)[0]
