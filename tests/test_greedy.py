"""The greedy walk's choices, on a space small enough to reason about: one prunable group and one
layer the sensitivity analysis kept float (int8 is faster there but costs accuracy). Latency and
accuracy are given as functions, so the test is about the walk, not about models."""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import pytest

from edgekit.search import greedy
from edgekit.search.space import Candidate
from edgekit.search.study import Trials


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    channels: int


def _walk(int8_cost: float, prune_cost: float) -> greedy.Walk:
    """Latency 1.0 ms: pruning "g" to 8 channels saves 0.3 ms and costs `prune_cost` of accuracy; "conv"
    in int8 saves 0.3 ms and is estimated (its sensitivity) to cost `int8_cost`."""

    def predict(candidate, module):
        latency = 1.0 - (0.3 if candidate.keep.get("g", 16) < 16 else 0.0) - (0.3 if candidate.precision.get("conv") == "int8" else 0.0)
        return latency, 1.0

    return greedy.Walk(
        greedy.Channels(groups=[Group("g", 16)], choices={"g": (8, 16)},
                        with_keep=lambda c, g, k: dataclasses.replace(c, keep={**c.keep, g: k}),
                        prune=lambda module, keep: {**module, **keep}),
        greedy.Scoring(predict=predict, finetune=lambda module: None,
                       accuracy=lambda module: 0.95 - (prune_cost if module.get("g", 16) < 16 else 0.0),
                       penalty=lambda c: int8_cost if c.precision.get("conv") == "int8" else 0.0),
        precision_moves=lambda c: [(dataclasses.replace(c, precision={**c.precision, "conv": "int8"}), "conv")]
        if c.precision.get("conv") != "int8" else [])


@pytest.mark.parametrize(("int8_cost", "prune_cost", "first"), [(0.001, 0.02, "precision"), (0.03, 0.005, "prune")])
def test_precision_moves_compete_with_pruning_by_accuracy_per_millisecond(tmp_path, int8_cost, prune_cost, first):
    walk = _walk(int8_cost, prune_cost)
    start = greedy.State(Candidate(precision={"conv": "fp32"}), {}, 1.0, 1.0, 0.95)
    trials = Trials(tmp_path)
    state, stopped = greedy.run(walk, start, greedy.Budget(0.75), trials, deadline=time.monotonic() + 60,
                                max_trials=10, floor_accuracy=0.5)
    assert stopped == "met" and state.latency_ms == pytest.approx(0.7) and state.step == 1
    if first == "precision":  # the cheaper move per millisecond saved wins
        assert state.candidate.precision["conv"] == "int8" and not state.candidate.keep
        assert state.accuracy == pytest.approx(0.95 - int8_cost)  # estimated from the sensitivity
    else:
        assert state.candidate.keep == {"g": 8} and state.candidate.precision["conv"] == "fp32"
        assert state.accuracy == pytest.approx(0.95 - prune_cost)
    moves = [e for e in trials.evaluations() if e.attrs.get("accuracy_from") == "sensitivity"]
    assert len(moves) == 1 and moves[0].attrs["layer"] == "conv"  # recorded like any trial


def test_both_moves_when_one_is_not_enough(tmp_path):
    walk = _walk(0.001, 0.002)
    start = greedy.State(Candidate(precision={"conv": "fp32"}), {}, 1.0, 1.0, 0.95)
    state, stopped = greedy.run(walk, start, greedy.Budget(0.45), Trials(tmp_path), deadline=time.monotonic() + 60,
                                max_trials=10, floor_accuracy=0.5)
    assert stopped == "met" and state.candidate.keep == {"g": 8} and state.candidate.precision["conv"] == "int8"
    assert state.accuracy == pytest.approx(0.95 - 0.001 - 0.002)  # the measured pruning loss and the estimated int8 one


def test_a_step_whose_cuts_all_cost_too_much_tries_milder_ones(tmp_path):
    """From 16 channels the slice asks for a cut to 8 (too costly); half the slice finds 15 (allowed)."""
    walk = greedy.Walk(
        greedy.Channels(groups=[Group("g", 16)], choices={"g": (8, 15, 16)},
                        with_keep=lambda c, g, k: dataclasses.replace(c, keep={**c.keep, g: k}),
                        prune=lambda module, keep: {**module, **keep}),
        greedy.Scoring(predict=lambda c, m: (c.keep.get("g", 16) / 16, 1.0), finetune=lambda module: None,
                       accuracy=lambda module: {8: 0.5, 15: 0.94}.get(module.get("g", 16), 0.95)))
    start = greedy.State(Candidate(), {}, 1.0, 1.0, 0.95)
    lines: list[str] = []
    state, stopped = greedy.run(walk, start, greedy.Budget(0.25), Trials(tmp_path), deadline=time.monotonic() + 60,
                                max_trials=10, floor_accuracy=0.9, progress=lines.append)
    assert stopped == "accuracy" and state.candidate.keep == {"g": 15} and state.accuracy == pytest.approx(0.94)
    assert any("trying cuts of" in line for line in lines)


def test_a_walk_stuck_at_its_floor_consolidates_its_model_and_walks_on(tmp_path):
    """Each cut to 8 channels costs 0.06 from the model it is cut from, below the floor 0.9 from a model at
    0.95; consolidating (a longer fine-tune) lifts a model to 0.99, from where the cut is allowed. The
    original model is never trained; a resumed walk replays the consolidation and asks for no new trial."""
    def accuracy(module):
        return module["base"] - 0.06 * sum(module.get(g, 16) < 16 for g in ("a", "b"))

    consolidated: list[dict] = []

    def consolidate(module):
        consolidated.append(dict(module))
        module["base"] = 0.99 + 0.06 * sum(module.get(g, 16) < 16 for g in ("a", "b"))

    def walk():
        return greedy.Walk(
            greedy.Channels(groups=[Group("a", 16), Group("b", 16)], choices={"a": (8, 16), "b": (8, 16)},
                            with_keep=lambda c, g, k: dataclasses.replace(c, keep={**c.keep, g: k}),
                            prune=lambda module, keep: {**module, **keep}),
            greedy.Scoring(predict=lambda c, m: (1.0 - 0.3 * len(c.keep), 1.0), finetune=lambda module: None,
                           accuracy=accuracy, consolidate=consolidate))

    original = {"base": 0.95}
    unwalked, stopped = greedy.run(walk(), greedy.State(Candidate(), original, 1.0, 1.0, 0.95), greedy.Budget(0.4),
                                   Trials(tmp_path / "unwalked"), deadline=time.monotonic() + 60, max_trials=20,
                                   floor_accuracy=0.9)
    assert stopped == "accuracy" and not consolidated  # the original model has nothing to recover
    lines: list[str] = []
    trials = Trials(tmp_path)
    walked = greedy.State(Candidate(), original, 1.0, 1.0, 0.95, step=1)  # as if a step had been taken
    state, stopped = greedy.run(walk(), walked, greedy.Budget(0.4), trials,
                                deadline=time.monotonic() + 60, max_trials=20, floor_accuracy=0.9, progress=lines.append)
    assert stopped == "met" and state.candidate.keep == {"a": 8, "b": 8} and original == {"base": 0.95}
    assert state.accuracy == pytest.approx(0.93) and state.consolidations == 2  # once before each cut
    assert [e.key.startswith("consolidated:") for e in trials.evaluations()].count(True) == 2
    assert sum("fine-tuned longer" in line for line in lines) == 2
    recorded = len(trials)
    consolidated.clear()
    replayed, stopped = greedy.run(walk(), dataclasses.replace(walked, module={"base": 0.95}), greedy.Budget(0.4),
                                   Trials(tmp_path, resume=True), deadline=time.monotonic() + 60, max_trials=recorded,
                                   floor_accuracy=0.9)
    assert stopped == "met" and replayed.candidate == state.candidate and len(consolidated) == 2


def test_a_consolidation_that_scores_lower_is_set_aside_and_milder_cuts_are_tried(tmp_path):
    """A longer fine-tune that leaves the model lower on validation (it trains on the calibration split) is
    not kept: the walk keeps the model as it was and goes straight to milder cuts (the same model would
    propose the same step again), here until none is left above the floor."""
    def accuracy(module):
        return module["base"] - 0.06 * sum(module.get(g, 16) < 16 for g in ("a", "b"))

    def consolidate(module):
        module["base"] -= 0.03

    walk = greedy.Walk(
        greedy.Channels(groups=[Group("a", 16), Group("b", 16)], choices={"a": (8, 16), "b": (8, 16)},
                        with_keep=lambda c, g, k: dataclasses.replace(c, keep={**c.keep, g: k}),
                        prune=lambda module, keep: {**module, **keep}),
        greedy.Scoring(predict=lambda c, m: (1.0 - 0.3 * len(c.keep), 1.0), finetune=lambda module: None,
                       accuracy=accuracy, consolidate=consolidate))
    original, lines, trials = {"base": 0.95}, [], Trials(tmp_path)
    start = greedy.State(Candidate(), original, 1.0, 1.0, 0.95, step=1)  # as if a step had been taken
    state, stopped = greedy.run(walk, start, greedy.Budget(0.4), trials, deadline=time.monotonic() + 60,
                                max_trials=20, floor_accuracy=0.9, progress=lines.append)
    assert stopped == "accuracy" and state.module is original and original == {"base": 0.95}
    assert state.consolidations == 0 and state.accuracy == 0.95  # the lower-scoring model was not kept
    consolidations = [e for e in trials.evaluations() if e.key.startswith("consolidated:")]
    assert len(consolidations) == 1 and consolidations[0].accuracy == pytest.approx(0.92)
    set_aside = next(i for i, line in enumerate(lines) if "kept as it was" in line)
    assert "trying cuts of" in lines[set_aside + 1]  # no second pass over the same proposals


def test_a_step_fine_tunes_only_the_cuts_that_lose_least_before_fine_tuning(tmp_path):
    """Eight groups, each cut saving 0.1 ms; before fine-tuning, group gi's cut costs i/100 of accuracy, and
    fine-tuning gives back half of it. Only the SHORTLIST cheapest are fine-tuned and recorded; g0 wins."""
    names = [f"g{i}" for i in range(8)]
    tuned: list[str] = []

    def accuracy(module):
        lost = sum(int(g[1:]) / 100 for g in names if module.get(g, 16) < 16)
        return 0.95 - lost / (2 if module.get("tuned") else 1)

    def finetune(module):
        tuned.extend(g for g in names if module.get(g, 16) < 16)
        module["tuned"] = True

    walk = greedy.Walk(
        greedy.Channels(groups=[Group(g, 16) for g in names], choices={g: (8, 16) for g in names},
                        with_keep=lambda c, g, k: dataclasses.replace(c, keep={**c.keep, g: k}),
                        prune=lambda module, keep: {**{k: v for k, v in module.items() if k != "tuned"}, **keep}),
        greedy.Scoring(predict=lambda c, m: (1.0 - 0.1 * len(c.keep), 1.0), finetune=finetune, accuracy=accuracy))
    trials, lines = Trials(tmp_path), []
    state, stopped = greedy.run(walk, greedy.State(Candidate(), {}, 1.0, 1.0, 0.95), greedy.Budget(0.95), trials,
                                deadline=time.monotonic() + 60, max_trials=50, floor_accuracy=0.5, progress=lines.append)
    assert stopped == "met" and state.candidate.keep == {"g0": 8}
    assert sorted(tuned) == names[:greedy.SHORTLIST]  # the others were scored, never fine-tuned
    assert len(trials) == greedy.SHORTLIST and any("fine-tuning the 4" in line for line in lines)
    assert trials.get(state.candidate.key()).accuracy == pytest.approx(0.95)


def test_the_last_round_within_the_budget_ships():
    from edgekit.search.loop import Round, chosen_round

    def round_(judged, predicted=1.0):
        return Round(1.0, "met", {}, predicted, judged, 0.9)

    assert chosen_round([round_(0.99), round_(0.9)], 1.0) == 1  # the tighter one has room under the budget
    assert chosen_round([round_(0.95), round_(1.05)], 1.0) == 0  # a later round measured over it does not ship
    assert chosen_round([round_(1.2), round_(1.1)], 1.0) == 1  # none met: the last, reported as missed
    assert chosen_round([round_(None, 0.8)], 1.0) == 0  # off the device the prediction judges


def _probe(probed: list, width: int) -> int:
    probed.append(width)
    return width


@pytest.mark.parametrize("shape", ["linear", "convex", "concave", "steps", "kinked"])
def test_a_group_proposal_is_the_largest_width_saving_a_slice_in_few_predictions(shape):
    """An FFN's kept width (256 to 1020 in steps of 4) is chosen by guessing from the latencies known
    either side of the answer: the bisection's answer, whatever the (rising) curve; 3 predictions where
    latency is linear in the width (bisection: 8 or 9), and at most 4 over bisection's."""
    import math

    curves = {"linear": lambda w: 0.2 + w / 1024, "convex": lambda w: 0.2 + (w / 1024) ** 2,
              "concave": lambda w: 0.2 + math.sqrt(w / 1024), "steps": lambda w: 0.2 + math.ceil(w / 128) / 8,
              "kinked": lambda w: 0.2 + (0.3 * w / 1024 if w < 600 else 0.3 * 600 / 1024 + 3 * (w - 600) / 1024)}
    latency, values = curves[shape], list(range(256, 1024, 4))
    for slice_ms in (0.013, 0.071, 0.199, 0.333, 0.487):
        counts = []
        for current in (1024, None):  # None: plain bisection
            probed = []
            walk = greedy.Walk(greedy.Channels(groups=[], choices={}, with_keep=None, prune=None),
                               greedy.Scoring(predict=lambda width, module: (latency(width), 1.0), finetune=None, accuracy=None))
            state = greedy.State(None, None, latency(1024), 1.0, 1.0)
            found = greedy._proposal(walk, state, values, functools.partial(_probe, probed), lambda w: None, str,
                                     slice_ms, current)
            expected = max((w for w in values if latency(1024) - latency(w) >= slice_ms), default=values[0])
            assert found[0] == expected, (shape, slice_ms, probed)
            counts.append(len(probed))
        assert counts[0] <= counts[1] + 4, (shape, slice_ms, counts)
        if shape == "linear":
            assert counts[0] <= 3 < counts[1], (slice_ms, counts)


def test_on_the_device_only_the_round_that_ships_is_distilled_then_measured_again(tmp_path, monkeypatch):
    """Rounds on the device build the walked model as it is (its graph, not its weights, sets the latency);
    `finish` distils the shipped round's candidate into round-N/distilled/ and judges the graph on both
    builds' timings, keeping the walked build's figures; an unpruned candidate ships its walked build. Builds are stand-ins here (the real
    ones are in test_search.py and bench/search.py): this is about which build ships and what is reported."""
    from types import SimpleNamespace

    from edgekit.search import rounds

    built_in: list = []

    def build(loop, state, folder, finetuned=None):
        built_in.append(folder.relative_to(tmp_path))
        return SimpleNamespace(report={"p50": 0.8}, validation=0.97, folder=folder)

    monkeypatch.setattr(rounds, "build_candidate", build)
    monkeypatch.setattr(rounds, "with_qat", lambda loop, built, state: built)
    anchor = SimpleNamespace(judge=lambda report: SimpleNamespace(ms=report["p50"], ratio=report["p50"], as_dict=lambda: {"ms": report["p50"], "ratio": report["p50"]}))
    loop = SimpleNamespace(ctx=SimpleNamespace(run_dir=tmp_path, progress=lambda line: None),
                           original=SimpleNamespace(anchor=anchor), budget_ms=0.9)
    walked = SimpleNamespace(report={"p50": 0.85}, validation=0.93, folder=tmp_path / "round-2")
    round_ = rounds.Round(0.9, "met", {}, 0.84, 0.85, 0.93, {"ms": 0.85, "ratio": 0.85}, walked.report, None, "round-2")
    pruned = greedy.State(Candidate(keep={"g": 8}), {}, 0.84, 1.0, 0.93)
    shipped = rounds.finish(loop, round_, pruned, walked)
    assert built_in == [Path("round-2/distilled")] and shipped.ships and shipped.shipped == "round-2/distilled"
    assert shipped.accuracy_validation == 0.97  # the distilled build's; its latency, both timings of the graph
    assert shipped.judged_ms == pytest.approx(0.825) and shipped.measurement["ratio"] == pytest.approx(0.825)
    assert shipped.measurement["ratios"] == {"walked": 0.85, "distilled": 0.8}
    assert shipped.as_walked == {"folder": "round-2", "judged_ms": 0.85, "validation": 0.93}
    built_in.clear()
    unpruned = rounds.finish(loop, round_, greedy.State(Candidate(), {}, 0.84, 1.0, 0.93), walked)
    assert built_in == [] and unpruned.ships and unpruned.shipped == "round-2" and unpruned.judged_ms == 0.85
    assert unpruned.as_walked is None


def test_the_walks_floor_allows_for_the_noise_of_a_score_counted_on_few_samples():
    """Top-1 on a few hundred validation samples moves by points between two scorings of one model: the
    floor lies that much lower (one-sided 95 %), less so the more samples; a metric not counted per
    sample (cosine) gets the allowed drop and the slack alone."""
    from edgekit.metrics import load_metric
    from edgekit.search import rounds

    top1, cosine = load_metric("top1"), load_metric("cosine")
    plain = 0.98 - (1 + rounds.WALK_SLACK_PT) / 100
    few, many = (rounds.walk_floor(top1, 0.98, 1.0, n) for n in (243, 100_000))
    assert plain - few == pytest.approx(1.645 * (plain * (1 - plain) / 243) ** 0.5) and 0.02 < plain - few < 0.03
    assert 0 < plain - many < 0.002
    assert rounds.walk_floor(cosine, 1.0, 1.0, 243) == pytest.approx(1.0 - (1 + rounds.WALK_SLACK_PT) / 100)
