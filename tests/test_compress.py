"""Compression actions (pruning, low-rank, distillation) and the search space built on them.

Structural tests use the zoo's architectures untrained (the same layers as `edgekit.zoo:resnet` and
`:mobilenet`, without their training time); distillation uses the trained digits demo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgekit import graph, zoo
from edgekit.compress.distill import DistillSettings, distill
from edgekit.compress.lowrank import factorize, rank_choices
from edgekit.compress.prune import PruneGroup, count_macs, prune, prune_groups
from edgekit.errors import BadInput, Failure
from edgekit.models import InputSpec, LoadedModel, load_model
from edgekit.search.space import (
    Candidate,
    align,
    alignment_for,
    build_space,
    example_tensors,
    keep_choices,
    layer_names_map,
    materialize,
)
from edgekit.targets import load_target

X32 = (torch.zeros(1, 1, 32, 32),)


def _zoo(make, name: str) -> LoadedModel:
    torch.manual_seed(0)
    module = make().eval()
    example = {"x": np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32)}
    return LoadedModel(f"test:{name}", "torch", (InputSpec("x", (1, 1, 32, 32), "float32"),), example, "0" * 64,
                       module=module)


@pytest.fixture(scope="module")
def resnet() -> LoadedModel:
    return _zoo(zoo.make_resnet, "resnet")


@pytest.fixture(scope="module")
def mobilenet() -> LoadedModel:
    return _zoo(zoo.make_mobilenet, "mobilenet")


def _by_name(groups: list[PruneGroup]) -> dict[str, PruneGroup]:
    return {g.name: g for g in groups}


def test_resnet_groups_couple_residual_convs_and_skip_the_classifier(resnet):
    groups = _by_name(prune_groups(resnet.module, example_tensors(resnet)))
    assert {n: g.channels for n, g in groups.items()} == {
        "0": 32, "3.conv1": 32, "4.conv1": 64, "4.conv2": 64, "5.conv1": 128, "5.conv2": 128}
    assert {"0", "1", "3.conv2", "3.bn2", "4.conv1", "4.shortcut.0"} <= set(groups["0"].modules)  # identity shortcut
    assert {"4.conv2", "4.shortcut.0", "5.conv1"} <= set(groups["4.conv2"].modules)  # projection shortcut joins too
    assert "8" not in groups and "8" in groups["5.conv2"].modules  # classifier: only its inputs follow
    assert all(0 < g.macs_share <= 1 for g in groups.values())


def test_mobilenet_depthwise_follows_its_expand_conv(mobilenet):
    groups = _by_name(prune_groups(mobilenet.module, example_tensors(mobilenet)))
    assert len(groups) == 10 and "14" not in groups
    assert {"4.block.0", "4.block.1", "4.block.3", "4.block.4", "4.block.6"} <= set(groups["4.block.0"].modules)
    assert {"4.block.6", "5.block.6", "5.block.0", "6.block.0"} <= set(groups["4.block.6"].modules)  # residual add
    assert not any(name.endswith(".block.3") for name in groups)  # a depthwise conv never roots a group


def test_ignored_layers_drop_their_groups(resnet):
    names = [g.name for g in prune_groups(resnet.module, X32, ignored=("3.conv1",))]
    assert "3.conv1" not in names and "0" in names
    with pytest.raises(BadInput, match="not modules"):
        prune_groups(resnet.module, X32, ignored=("nope",))


def test_prune_keeps_exactly_the_asked_channels_and_leaves_the_original(resnet):
    before = {k: v.clone() for k, v in resnet.module.state_dict().items()}
    pruned = prune(resnet.module, X32, {"0": 16, "5.conv1": 48, "4.conv2": 64})
    assert pruned[0].out_channels == pruned[3].conv2.out_channels == pruned[4].conv1.in_channels == 16
    assert pruned[5].conv1.out_channels == 48 and pruned[5].conv2.in_channels == 48
    assert pruned[4].conv2.out_channels == 64 and pruned[8].out_features == 10
    assert pruned(X32[0]).shape == (1, 10) and not pruned.training
    after = resnet.module.state_dict()
    assert resnet.module[0].out_channels == 32 and all(torch.equal(before[k], after[k]) for k in before)
    for keep in ({"0": 0}, {"0": 33}, {"8": 5}, {"0": 8.5}):
        with pytest.raises(BadInput):
            prune(resnet.module, X32, keep)


def test_prune_keeps_the_largest_magnitude_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    scale = torch.tensor([0.1, 3.0, 0.2, 2.0, 0.3, 5.0, 0.4, 4.0])
    with torch.no_grad():  # channels 1, 3, 5, 7 are the big ones in every layer of the group
        model[0].weight.mul_(scale[:, None, None, None])
        model[1].weight.mul_(scale)
        model[3].weight.mul_(scale[None, :, None, None])
    x = torch.randn(16, 1, 8, 8)
    pruned = prune(model, (x[:1],), {"0": 4})
    torch.testing.assert_close(pruned[0].weight, model[0].weight[[1, 3, 5, 7]])
    torch.testing.assert_close(pruned[3].weight, model[3].weight[:, [1, 3, 5, 7]])
    assert [g.name for g in prune_groups(model, (x[:1],))] == ["0", "3"]  # the Linear classifier is not a group


def test_align_and_keep_choices():
    for alignment in (1, 4, 8, 16, 32):
        for total in range(1, 300, 7):
            group = PruneGroup("g", total, ("g",))
            choices = keep_choices(group, alignment)
            assert choices and list(choices) == sorted(set(choices)) and choices[-1] == total
            assert all(c % alignment == 0 and c >= alignment for c in choices[:-1])
            assert choices[0] >= min(total, alignment) and (len(choices) == 1 or choices[0] >= 0.25 * total)
            for channels in range(0, total + 40, 5):
                kept = align(channels, alignment, total)
                assert kept == total or (kept % alignment == 0 and alignment <= kept < total)
    assert align(12, 8, 64) == 16 and align(3, 8, 64) == 8 and align(70, 16, 72) == 72 and align(100, 16, 72) == 72
    assert keep_choices(PruneGroup("g", 144, ("g",)), 16) == (48, 64, 80, 96, 112, 128, 144)
    with pytest.raises(BadInput):
        keep_choices(PruneGroup("g", 8, ("g",)), 8, min_keep=0)


def test_alignment_for_takes_the_largest_of_the_precisions():
    rpi5 = load_target("rpi5")
    assert alignment_for(rpi5, ["fp32"]) == 4 and alignment_for(rpi5, ["fp32", "int8"]) == 16
    assert alignment_for(rpi5, []) == 16
    with pytest.raises(BadInput, match="no channel alignment"):
        alignment_for(load_target("coral-edgetpu"), ["fp32"])


def test_candidates_are_hashable_with_stable_keys():
    a = Candidate({"b": 16, "a": 32}, {"node_Conv_1": "int8"})
    b = Candidate.from_dict(a.as_dict())
    assert a == b and hash(a) == hash(b) and a.key() == b.key() and len(a.key()) == 12
    assert len({a, b, Candidate({"a": 32})}) == 2 and a.keep["b"] == 16 and dict(a.keep) == {"a": 32, "b": 16}
    with pytest.raises(BadInput):
        Candidate.from_dict({"keep": {"a": "many"}})


def test_space_checks_and_canonicalises_candidates(resnet, tmp_path):
    onnx_path = graph.export_onnx(resnet, tmp_path / "resnet.onnx")
    space = build_space(resnet, onnx_path, load_target("rpi5"), lowrank=True)
    assert space.alignment == 16 and space.precisions == ("fp32", "fp16", "int8") and len(space.layers) == 10
    assert space.choices["5.conv1"] == (32, 48, 64, 80, 96, 112, 128) and space.choices["0"] == (16, 32)
    assert space.lowrank["5.shortcut.0"] == (16, 32)
    assert space.as_dict()["groups"][0]["name"] == "0"
    full = space.candidate({"0": 32}, {space.layers[0]: "fp32"})
    assert full == Candidate() and full.key() == Candidate().key()  # whole groups and defaults drop out
    half = space.uniform(0.5)
    assert dict(half.keep) == {"0": 16, "3.conv1": 16, "4.conv1": 32, "4.conv2": 32, "5.conv1": 64, "5.conv2": 64}
    for keep, precision in (({"0": 24}, {}), ({"0": 16.0}, {}), ({"zz": 16}, {}), ({}, {"nope": "int8"}), ({}, {space.layers[0]: "int4"})):
        with pytest.raises(BadInput):
            space.candidate(keep, precision)


def test_materialized_candidate_exports_the_same_layers_in_order(mobilenet, tmp_path, demo_onnx):
    original = graph.export_onnx(mobilenet, tmp_path / "mobilenet.onnx")
    space = build_space(mobilenet, original, load_target("rpi5"))
    candidate = space.uniform(0.5)
    pruned = materialize(mobilenet, candidate)
    assert pruned.spec == "test:mobilenet#pruned" and pruned.sha256 != mobilenet.sha256
    assert pruned.inputs == mobilenet.inputs and pruned.module is not mobilenet.module
    macs = sum(count_macs(pruned.module, X32).values()) / sum(count_macs(mobilenet.module, X32).values())
    assert 0.25 < macs < 0.5
    exported = graph.export_onnx(pruned, tmp_path / "pruned.onnx")
    names = layer_names_map(original, exported)
    assert list(names) == list(space.layers)
    assert graph.totals(graph.layer_table(exported))["layers"] == graph.totals(graph.layer_table(original))["layers"]
    assert materialize(mobilenet, Candidate()) is mobilenet
    onnx_only = build_space(load_model(str(demo_onnx)), demo_onnx, load_target("rpi5"))
    assert onnx_only.groups == () and len(onnx_only.layers) == 5  # an ONNX model: precisions only
    with pytest.raises(Failure, match="do not line up"):
        layer_names_map(original, demo_onnx)


def test_lowrank_full_rank_is_exact_and_lower_rank_saves_macs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 48, 1), nn.ReLU(), nn.Conv2d(48, 40, 1, stride=2), nn.Flatten(),
                          nn.Linear(40 * 16, 64)).eval()
    x = torch.randn(2, 3, 8, 8)
    full = factorize(model, {"2": 40, "4": 64})
    torch.testing.assert_close(full(x), model(x), rtol=1e-4, atol=1e-5)
    assert isinstance(model[4], nn.Linear)  # the original is untouched
    assert rank_choices(model[4], 16) == (16, 32, 48) and rank_choices(model[2], 8) == (8, 16)
    low = factorize(model, {"4": 16, "2": 8})
    macs, low_macs = sum(count_macs(model, (x[:1],)).values()), sum(count_macs(low, (x[:1],)).values())
    assert low_macs < macs and low(x).shape == (2, 64)
    for names in ({"0": 3, "nope": 2}, {"4": 0}, {"4": 65}):
        with pytest.raises(BadInput):
            factorize(model, names)
    with pytest.raises(BadInput, match="cannot be factorized"):
        rank_choices(nn.Conv2d(4, 4, 3), 4)


def test_a_factorized_ffn_is_still_pruned_as_its_own_width_not_the_residual_stream():
    """After layers.0.ff.0 becomes a rank-16 pair, the FFN width (256) and the residual stream (64) share as many
    of the old group's layers; the name must go to the FFN's output factor (a bench search once asked the
    residual stream to keep 128 of its 64 channels)."""
    from examples.encoder import build

    model, inputs = build(layers=1, dim=64, heads=4, seq=8)
    example = (inputs["input_ids"], inputs["attention_mask"])
    groups = prune_groups(model, example)
    assert {g.name: g.channels for g in groups}["layers.0.ff.0"] == 256
    low = factorize(model, {"layers.0.ff.0": 16})
    pruned = prune(low, example, {"layers.0.ff.0": 128}, like=groups)
    assert pruned.layers[0].ff[0][1].out_features == 128 and pruned.layers[0].ff[2].in_features == 128
    assert pruned.layers[0].proj.out_features == 64 and pruned(*example).shape == model(*example).shape


def _agreement(student, teacher, x: np.ndarray) -> float:
    with torch.no_grad():
        return float((student(torch.from_numpy(x)).argmax(1) == teacher(torch.from_numpy(x)).argmax(1)).float().mean())


def test_distillation_recovers_a_pruned_demo_within_its_budget(demo_model):
    from edgekit.demo import held_out

    x, _ = held_out()
    train, val = x[:200], x[200:]
    teacher = demo_model.module
    groups = prune_groups(teacher, example_tensors(demo_model))
    student = prune(teacher, example_tensors(demo_model), {g.name: g.channels // 2 for g in groups})
    before = _agreement(student, teacher, val)
    report = distill(student, teacher, {demo_model.inputs[0].name: train}, DistillSettings(seconds=15, epochs=8))
    after = _agreement(student, teacher, val)
    assert after > before + 0.2 and not student.training and report.loss == "kl"
    assert report.steps <= report.planned_steps == 8 * 7 and report.last_loss <= report.first_loss
    assert report.stopped_by == "time" or report.epochs == 8

    tiny = distill(prune(teacher, example_tensors(demo_model), {groups[0].name: 8}), teacher,
                   {demo_model.inputs[0].name: train}, DistillSettings(seconds=1e-6))
    assert tiny.stopped_by == "time" and tiny.steps == 1 and tiny.epochs == 0


def test_distillation_is_deterministic_and_matches_other_outputs_by_mse():
    def make():
        torch.manual_seed(1)
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))

    teacher = make()
    x = {"x": np.random.default_rng(0).random((20, 2, 6, 6), dtype=np.float32)}
    a, b = make(), make()
    with torch.no_grad():
        for student in (a, b):
            student[0].weight.mul_(0.5)
    two = DistillSettings(epochs=2, batch=8)
    ra, rb = distill(a, teacher, x, two), distill(b, teacher, x, two)
    assert ra.loss == "mse" and ra.stopped_by == "epochs" and ra.steps == 6 and ra.last_loss == rb.last_loss
    assert distill(make(), teacher, {"x": x["x"][:17]}, DistillSettings(epochs=1, batch=8)).steps == 2  # never a batch of one
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    for bad in ({"seconds": 0}, {"epochs": 0}, {"batch": -1}):
        with pytest.raises(BadInput):
            distill(make(), teacher, x, DistillSettings(**bad))
    with pytest.raises(BadInput):
        distill(make(), teacher, {})
    with pytest.raises(BadInput, match="copy"):
        distill(teacher, teacher, x)


def test_a_candidates_layer_table_is_kept_by_its_shapes_not_its_weights(resnet, monkeypatch):
    """The search prices a cut again in its next step: a module with the same shapes (other weights) takes
    the kept table; another cut, or another setting of a layer, is exported again."""
    import copy

    from edgekit.search import evaluate

    exports = []
    real = evaluate._export_layer_table
    monkeypatch.setattr(evaluate, "_export_layer_table", lambda m, loaded: exports.append(m) or real(m, loaded))
    monkeypatch.setattr(evaluate, "_TABLES", type(evaluate._TABLES)())
    group = prune_groups(resnet.module, X32)[0]
    pruned = prune(resnet.module, X32, {group.name: group.channels // 2})
    other_weights = copy.deepcopy(pruned)
    with torch.no_grad():
        for p in other_weights.parameters():
            p.mul_(2.0)
    first = evaluate.fast_layer_table(pruned, resnet)
    assert evaluate.fast_layer_table(other_weights, resnet) == first and len(exports) == 1
    assert evaluate.fast_layer_table(resnet.module, resnet) != first and len(exports) == 2
    strided = copy.deepcopy(pruned)
    next(m for m in strided.modules() if isinstance(m, nn.Conv2d)).stride = (2, 2)
    assert evaluate.fast_layer_table(strided, resnet) != first and len(exports) == 3
