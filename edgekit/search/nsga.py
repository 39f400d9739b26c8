"""The multi-objective strategy: Optuna's NSGA-II over every group's kept channels at once.

Each trial samples an aligned keep for every prunable group, prunes the original model, and scores it
without fine-tuning (predicted latency to minimise, validation accuracy to maximise; the budget is an
Optuna constraint). The trials draw the Pareto front of the whole space, which the report plots; the
chosen candidate is the most accurate one that meets the budget, and the closed loop distils it
before building it. Trials live in the same storage as the greedy walk's, so a killed search resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edgekit.errors import Failure
from edgekit.search.greedy import Budget, State, Walk, kept
from edgekit.search.study import Evaluation, Trials

POPULATION = 16


def sampler(seed: int = 0):
    import optuna

    return optuna.samplers.NSGAIISampler(population_size=POPULATION, seed=seed,
                                         constraints_func=lambda trial: [trial.user_attrs.get("over_budget", 0.0)])


def run(walk: Walk, start: State, budget: Budget, trials: Trials, *, deadline: float, max_trials: int,
        floor_accuracy: float, progress: Callable[[str], None] = lambda _: None) -> tuple[State, str]:
    """Sample until `max_trials` candidates are stored or time runs out; return the best that meets the budget."""
    stopped = "trials"
    while len(trials) < max_trials:
        if time.monotonic() > deadline:
            stopped = "time"
            break
        trial = trials.start()
        candidate, channels = start.candidate, walk.channels
        for group in channels.groups:
            candidate = channels.with_keep(candidate, group.name,
                                           trial.suggest_categorical(group.name, list(channels.choices[group.name])))
        try:  # the candidate must run and export before it is timed
            module = channels.prune(start.module, {g.name: kept(candidate, g) for g in channels.groups})
            latency, memory = walk.scoring.predict(candidate, module)
        except Failure as err:
            walk.skip(candidate, f"trial {trial.number}", str(err))
            trials.fail(trial)
            progress(f"trial {trial.number}: skipped, {err}")
            continue
        over = max(latency - budget.latency_ms, 0.0) / budget.latency_ms
        if budget.memory_mb is not None:
            over += max(memory - budget.memory_mb, 0.0) / budget.memory_mb
        trial.set_user_attr("over_budget", over)
        evaluation = trials.record(Evaluation(candidate.key(), candidate.as_dict(), latency, "predicted",
                                              walk.scoring.accuracy(module), {"memory_mb": memory, "strategy": "nsga"}),
                                   trial)
        progress(f"trial {evaluation.number}: {latency:.3f} ms predicted, accuracy {evaluation.accuracy:.4f}"
                 + ("" if over == 0 else " (over budget)"))
    return choose(walk, start, budget, trials, floor_accuracy), stopped


def choose(walk: Walk, start: State, budget: Budget, trials: Trials, floor_accuracy: float) -> State:
    """The most accurate stored candidate within the budget (the fastest when none is)."""
    evals = [e for e in trials.evaluations() if e.latency_kind == "predicted"]
    within = [e for e in evals if budget.met(e.latency_ms, e.attrs.get("memory_mb", 0.0))]
    best = max(within, key=lambda e: (e.accuracy, -e.latency_ms)) if within else min(evals, key=lambda e: e.latency_ms)
    candidate, channels = start.candidate, walk.channels
    for group in channels.groups:
        candidate = channels.with_keep(candidate, group.name, best.candidate["keep"].get(group.name, group.channels))
    module = channels.prune(start.module, {g.name: kept(candidate, g) for g in channels.groups})
    return State(candidate, module, best.latency_ms, best.attrs.get("memory_mb", 0.0), best.accuracy)
