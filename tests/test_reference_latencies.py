"""Published reference latencies in the targets (issue 15): every device lists sourced anchors or says why not,
the schema refuses a bad entry in one line, `targets show` prints them, and each anchor's model key builds the
architecture with the multiply-accumulates its paper or model zoo publishes."""

from __future__ import annotations

import re

import pytest
import yaml

from edgekit.errors import BadInput
from edgekit.graph import totals
from edgekit.reference_models import REFERENCE_MODELS, reference_table, spec
from edgekit.targets import list_targets, load_target, shipped_dir
from tests.conftest import run_cli

# The devices issue 15 asks anchors of: Jetsons, Pis, Coral and the FPGAs (host is measured, never predicted).
ANCHORED = ("jetson-nano", "jetson-xavier-nx", "jetson-orin-nano", "jetson-agx-orin", "rpi4", "rpi5",
            "coral-edgetpu", "kv260", "zcu104")
MACS_TOLERANCE = 0.03  # the papers round (1.8x10^9, 569 million); a few percent catches a wrong block or width


def test_every_device_lists_three_sourced_anchors_or_says_why_not():
    for name in ANCHORED:
        target = load_target(name)
        anchors = target.reference_latencies
        if not anchors:
            assert len(target.reference_latencies_note) > 40, f"{name}: no reference latencies and no reason given"
            continue
        assert len(anchors) >= 3, f"{name}: {len(anchors)} reference latencies, at least 3 where any are published"
        for ref in anchors:
            assert len(ref.source) > 30 and ref.value > 0, (name, ref)


def test_every_target_but_host_has_anchors_or_a_note():
    for target in list_targets():
        if target.name != "host":
            assert target.reference_latencies or target.reference_latencies_note, target.name


def test_every_anchor_names_a_reference_model():
    for target in list_targets():
        for ref in target.reference_latencies:
            assert ref.model in REFERENCE_MODELS, f"{target.name}: unknown reference model '{ref.model}'"
            assert spec(ref.model).startswith("edgekit.reference_models:")


def _hooked_macs(key: str) -> int:
    """Conv and Linear multiply-accumulates counted in PyTorch (cheap: no export), as graph._macs counts them."""
    import torch

    model, example = REFERENCE_MODELS[key].factory()
    total = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            total.append(output.numel() * module.in_channels // module.groups * module.kernel_size[0] *
                         module.kernel_size[1])
        elif isinstance(module, torch.nn.Linear):
            total.append(output.numel() * module.in_features)

    for layer in model.modules():
        layer.register_forward_hook(count)
    with torch.no_grad():
        model(example)
    return sum(total)


@pytest.mark.parametrize("key", sorted(REFERENCE_MODELS))
def test_reference_model_macs_match_the_published_figure(key):
    reference = REFERENCE_MODELS[key]
    macs = _hooked_macs(key)
    assert abs(macs / reference.published_macs - 1) < MACS_TOLERANCE, \
        f"{key}: {macs / 1e6:.0f} M MACs, published {reference.published_macs / 1e6:.0f} M ({reference.macs_source})"


@pytest.fixture(scope="module")
def mobilenet_v2_table(tmp_path_factory):
    return reference_table("mobilenet_v2", tmp_path_factory.mktemp("reference"))


def test_layer_table_is_computed_as_a_users_model_is(mobilenet_v2_table):
    """Exported to ONNX and tabled by edgekit.graph: the MACs are the PyTorch count and the paper's 300 M."""
    macs = totals(mobilenet_v2_table)["macs"]
    assert macs == _hooked_macs("mobilenet_v2")
    assert abs(macs / 300e6 - 1) < MACS_TOLERANCE
    assert {layer.op for layer in mobilenet_v2_table} >= {"Conv", "Gemm"}


def test_an_anchor_at_another_input_size(tmp_path):
    """Coral's ResNet-50 V1 is timed at 299x299: the input shape reaches the export (MobileNet V1 here: smaller)."""
    table = reference_table("mobilenet_v1", tmp_path, "1x3x160x160")
    assert table[0].input_shapes[0] == (1, 3, 160, 160)
    assert totals(table)["macs"] < 569e6 * 0.6  # (160/224)^2 of the 224 count


def _target_with(tmp_path, entry: dict):
    data = yaml.safe_load((shipped_dir() / "rpi4.yaml").read_text())
    data.update(name="anchored", aliases=[], reference_latencies=[entry])
    (tmp_path / "_rpi.yaml").write_text((shipped_dir() / "_rpi.yaml").read_text())
    path = tmp_path / "anchored.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


GOOD = {"model": "mobilenet_v2", "input": "1x3x224x224", "batch": 1, "precision": "fp32", "runtime": "LiteRT",
        "value": 50.0, "unit": "ms", "which": "mean", "source": "a benchmark page, table 1"}


@pytest.mark.parametrize(("change", "field"), [
    ({"unit": "fps"}, "reference_latencies.0"),          # a throughput unit with a latency statistic
    ({"value": -1}, "reference_latencies.0.value"),
    ({"input": "3x224"}, "reference_latencies.0.input"),  # not one sample's NxCxHxW
    ({"source": None}, "reference_latencies.0.source"),
    ({"speed": "fast"}, "reference_latencies.0.speed"),   # extra="forbid" like the rest of the schema
])
def test_schema_refuses_a_bad_entry_in_one_line_naming_the_file(tmp_path, change, field):
    entry = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    path = _target_with(tmp_path, entry)
    with pytest.raises(BadInput, match=r"anchored\.yaml: field '" + re.escape(field) + "'") as info:
        load_target(str(path))
    assert "\n" not in str(info.value)
    assert load_target(str(_target_with(tmp_path, GOOD))).reference_latencies[0].value == 50.0


def test_targets_show_prints_the_anchors_or_why_none():
    shown = run_cli("targets", "show", "coral-edgetpu", env={"COLUMNS": "250"})
    assert shown.returncode == 0, shown.stderr
    assert "reference latencies" in shown.stdout
    assert "mobilenet_v2" in shown.stdout and "2.6 ms" in shown.stdout and "coral.ai/docs/edgetpu/benchmarks" in shown.stdout
    none = run_cli("targets", "show", "rpi5", env={"COLUMNS": "250"})
    assert none.returncode == 0 and "reference latencies: none for rpi5" in none.stdout
