"""Size actions for flash-bound targets: zeros that survive fine-tuning, shared weights, the measured
(compressed) size of an export, and the ladder search against a flash budget.

A tiny conv net with random weights on 8x8 inputs: what matters here is bytes, not accuracy."""

from __future__ import annotations

import copy
from itertools import pairwise

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgekit.compress.distill import DistillSettings, distill
from edgekit.compress.shrink import (
    LADDER,
    Action,
    cluster,
    finetune_keeping,
    shrink_to_flash,
    sparsify,
    stored_size,
)
from edgekit.errors import BadInput

INPUTS = {"x": np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)}
LAYERS = ("0", "3", "7")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fine-tuning shares the machine; one thread also keeps it deterministic
    yield
    torch.set_num_threads(threads)


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10)).eval()


@pytest.fixture
def export(tmp_path):
    """What a runtime would ship: one ONNX file per call."""
    count = iter(range(1000))

    def write(module: nn.Module) -> list:
        path = tmp_path / f"model{next(count)}.onnx"
        torch.onnx.export(module, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False)
        return [path]

    return write


def _weights(net) -> dict[str, torch.Tensor]:
    return {n: net.get_submodule(n).weight.detach().clone() for n in LAYERS}


def _overall_zeros(net) -> float:
    weights = _weights(net).values()
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_sparsify_reaches_the_asked_sparsity_globally_or_per_layer():
    net = make_net()
    biases = {n: net.get_submodule(n).bias.detach().clone() for n in LAYERS}
    per_layer = sparsify(net, 0.7)
    assert set(per_layer) == set(LAYERS) and abs(_overall_zeros(net) - 0.7) < 0.01
    assert all(torch.equal(biases[n], net.get_submodule(n).bias) for n in LAYERS)  # biases and BatchNorm untouched
    assert torch.equal(net[1].weight, make_net()[1].weight)
    assert not any(torch.signbit(w[w == 0]).any() for w in _weights(net).values())  # +0.0 only: -0.0 compresses apart
    assert dict(net.named_parameters()).keys() == dict(make_net().named_parameters()).keys()  # no masks left

    layered = sparsify(make_net(), 0.5, scope="layer")
    assert all(abs(s - 0.5) < 0.01 for s in layered.values())
    only = make_net()
    assert sparsify(only, 0.5, layers=["3"]) == {"3": pytest.approx(0.5, abs=0.01)}
    assert torch.equal(only[0].weight, make_net()[0].weight)
    assert sparsify(net, 0.8)["3"] >= per_layer["3"]  # zeros already there are kept
    for bad in ({"sparsity": 1.0}, {"sparsity": -0.1}, {"sparsity": 0.5, "layers": ["1"]},
                {"sparsity": 0.5, "scope": "row"}):
        with pytest.raises(BadInput):
            sparsify(make_net(), **bad)


def test_zeros_survive_fine_tuning_only_when_kept():
    teacher = make_net()
    net = make_net()
    sparsify(net, 0.8)
    zeros = {n: w == 0 for n, w in _weights(net).items()}
    plain = copy.deepcopy(net)
    before = _weights(net)

    report = finetune_keeping(net, teacher, INPUTS, DistillSettings(seconds=10, epochs=2, seed=0))
    after = _weights(net)
    assert report.steps == 4 and not net.training
    assert all((after[n][zeros[n]] == 0).all() and not torch.signbit(after[n][zeros[n]]).any() for n in LAYERS)
    assert all(not torch.equal(after[n][~zeros[n]], before[n][~zeros[n]]) for n in LAYERS)  # the rest trained
    assert dict(net.named_parameters()).keys() == dict(make_net().named_parameters()).keys()
    assert not any(m._forward_pre_hooks for m in net.modules())

    distill(plain, teacher, INPUTS, DistillSettings(seconds=10, epochs=2, seed=0))  # without the masks the zeros are lost
    assert _overall_zeros(plain) < 0.1


def test_cluster_leaves_at_most_k_values_and_keeps_zeros():
    dense = make_net()
    reference = _weights(dense)
    counts = cluster(dense, 8)
    assert counts == {n: torch.unique(w).numel() for n, w in _weights(dense).items()}
    assert all(1 < c <= 8 for c in counts.values())
    for n, w in _weights(dense).items():  # each weight moved to a nearby shared value, not far off
        spread = float(reference[n].max() - reference[n].min())
        assert float((w - reference[n]).abs().max()) < spread / 4

    sparse = make_net()
    sparsify(sparse, 0.5)
    zeros = {n: w == 0 for n, w in _weights(sparse).items()}
    counts = cluster(sparse, 16)
    assert all(c <= 16 for c in counts.values()) and counts["3"] == 16
    assert all(torch.equal(w == 0, zeros[n]) for n, w in _weights(sparse).items())  # same zeros, no new ones
    assert sparse(torch.from_numpy(INPUTS["x"][:2])).shape == (2, 10)
    for bad in (1, 2.5, True):
        with pytest.raises(BadInput):
            cluster(make_net(), bad)


def test_stored_size_measures_what_sparse_and_shared_weights_save(export):
    sizes = {}
    for action in (Action(), Action(0.5), Action(0.9), Action(0.0, 16), Action(0.9, 16)):
        net = make_net()
        if action.sparsity:
            sparsify(net, action.sparsity)
        if action.clusters:
            cluster(net, action.clusters)
        sizes[action] = stored_size(export(net))
    dense, half, sparse, shared, both = sizes.values()
    assert len({s.raw_bytes for s in sizes.values()}) == 1  # float32 stays float32: only compression sees zeros
    assert dense.compressed_bytes > 0.85 * dense.raw_bytes  # random floats barely compress
    assert half.compressed_bytes < 0.65 * dense.compressed_bytes
    assert sparse.compressed_bytes < 0.2 * dense.compressed_bytes
    assert shared.compressed_bytes < 0.3 * dense.compressed_bytes
    assert both.compressed_bytes < 0.75 * sparse.compressed_bytes
    assert dense.compressed_mb == dense.compressed_bytes / 2**20
    two = stored_size(export(make_net()) + export(make_net()))
    assert two == type(two)(2 * dense.raw_bytes, 2 * dense.compressed_bytes)


def test_ladder_runs_from_mildest_to_strongest():
    assert LADDER[0] == Action()
    for milder, stronger in pairwise(LADDER):
        assert stronger.sparsity >= milder.sparsity
        assert (stronger.clusters or 2**32) <= (milder.clusters or 2**32) and stronger != milder


def test_shrink_to_flash_picks_the_mildest_rung_that_fits(export):
    net = make_net()
    original = _weights(net)
    dense_mb = stored_size(export(net)).compressed_mb
    budget = dense_mb * 0.3  # between the dense model and the strongest rung (about 9 %)

    result = shrink_to_flash(net, net, INPUTS, export, budget, training=DistillSettings(seconds=15, epochs=2, seed=0))
    assert result.met and result.size.compressed_mb <= budget and result.steps[-1].met
    assert result.action == Action(0.8) and result.action.as_dict() == {"sparsity": 0.8, "clusters": None}
    assert [s.action for s in result.steps] == list(LADDER[: LADDER.index(result.action) + 1])
    assert not any(s.met for s in result.steps[:-1]) and result.steps[0].compressed_mb == pytest.approx(dense_mb)
    assert result.steps[-1].finetuned and result.finetune.steps == 4
    assert stored_size(export(result.module)) == result.size  # the size reported is the shipped module's
    assert abs(_overall_zeros(result.module) - 0.8) < 0.01 and not result.module.training
    assert all(torch.equal(original[n], w) for n, w in _weights(net).items())  # the model given is untouched
    assert result.as_dict()["steps"][0]["met"] is False

    again = shrink_to_flash(net, net, INPUTS, export, budget, training=DistillSettings(seconds=15, epochs=2, seed=0))
    assert all(torch.equal(a, b) for a, b in zip(_weights(result.module).values(), _weights(again.module).values(), strict=True))


def test_shrink_to_flash_reports_a_budget_nothing_meets(export):
    net = make_net()
    result = shrink_to_flash(net, net, INPUTS, export, 1e-4, training=DistillSettings(seconds=5, epochs=1))
    assert not result.met and result.action == LADDER[-1] and result.finetune is None
    assert len(result.steps) == len(LADDER) and not any(s.met for s in result.steps)
    assert result.size.compressed_mb > 1e-4 and max(cluster(result.module, 16).values()) <= 16

    roomy = shrink_to_flash(net, net, INPUTS, export, 10.0, training=DistillSettings(seconds=5))
    assert roomy.met and roomy.action == Action() and roomy.finetune is None and roomy.module is not net
    for bad in (0, -1.0, True):
        with pytest.raises(BadInput):
            shrink_to_flash(net, net, INPUTS, export, bad, training=DistillSettings(seconds=5))
