"""The hls4ml backend on the FPGA targets: the demo deployed to the KV260 and checked in hls4ml's
compiled C simulation, and the PyTorch rewrites and fixed-point rules it relies on."""

import json
import shutil

import numpy as np
import pytest

from edgekit.errors import BadInput
from tests.conftest import run_cli

pytest.importorskip("hls4ml", reason="hls4ml is not installed: pip install 'edgekit[fpga]'")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="hls4ml's C simulation compiles with g++, not on PATH here")


@pytest.fixture(scope="module")
def kv260_run(tmp_path_factory):
    """One real `edgekit deploy --target fpga` of the demo (calibration, conversion, g++ compile, the
    check on the test split). One thread: PyTorch's reference outputs otherwise wait on a busy core."""
    out = tmp_path_factory.mktemp("kv260")
    result = run_cli("deploy", "--target", "fpga", "--out", str(out), env={"OMP_NUM_THREADS": "1", "COLUMNS": "220"})
    return out, result


@pytest.mark.slow
@needs_gxx
def test_demo_on_kv260_runs_the_c_simulation_and_prints_the_estimate(kv260_run):
    out, result = kv260_run
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["target"]["name"] == "kv260" and report["backend"] == "hls4ml"
    assert report["precision"]["label"] == "int8" and (out / "scales.json").is_file()  # edgekit's calibration ran first
    accuracy = report["accuracy"]
    assert accuracy["samples"] > 100 and accuracy["agreement"] >= 0.98 and accuracy["cosine"] > 0.99
    assert accuracy["where"].startswith("hls4ml 1.3") and "C simulation (g++)" in accuracy["where"]
    assert report["latency_ms"]["kind"] == "predicted"

    estimate = json.loads((out / "hls4ml_estimate.json").read_text())
    assert estimate["capacity"] == {"dsp": 1248, "bram36": 144, "uram": 64} and estimate["kind"] == "predicted"
    assert estimate["used"]["dsp"] == sum(layer["dsp"] for layer in estimate["layers"]) <= 1248
    assert estimate["fits"] and 0 < estimate["latency_ms"] < 1
    assert "estimate: " in result.stdout and "of 1248" in result.stdout and "fits xck26" in result.stdout

    build = report["build"]
    assert build["fixed_point"]["width"] == 8
    assert any("AdaptiveAvgPool2d → AvgPool2d(kernel=(4, 4))" in line for line in build["summary"])
    convs = [layer for layer in build["layers"] if layer["n_in"]]
    assert len(convs) == 5 and all(layer["reuse"] >= 1 for layer in convs)
    assert all(layer["weight"].startswith("ap_fixed<8,") for layer in convs)
    if shutil.which("vitis-run") is None:
        assert build["pending"] == "cd hls4ml && vitis-run --mode hls --tcl build_prj.tcl"
        assert "build_prj.tcl" in result.stdout and "built up to the engine" in report["status"]
    project = out / "hls4ml"
    assert (out / "model.hls4ml").is_file() and (project / "firmware" / "edgekit_model.cpp").is_file()
    assert "synth      1" in (project / "build_opt.tcl").read_text()


@pytest.mark.slow
@needs_gxx
def test_the_project_loads_again_from_its_manifest_and_computes_in_fixed_point(kv260_run, demo_model):
    from edgekit import graph
    from edgekit.backends.base import get_backend
    from edgekit.data import demo_data, split
    from edgekit.targets import load_target

    out, result = kv260_run
    assert result.returncode == 0, result.stderr
    backend = get_backend("hls4ml")
    artifact = backend.artifact_from_file(out / "model.hls4ml")
    engine = backend.load(artifact, target=load_target("kv260"), threads=1)  # links the project, compiles it again
    last = json.loads((out / "report.json").read_text())["build"]["layers"][-1]["result"]  # ap_fixed<8,I,...>
    step = 2.0 ** -(8 - int(last.split(",")[1]))
    test = split(demo_data(demo_model.inputs)).test
    for i in range(12):
        ours, = engine.run(test.sample(i))
        ref, = graph.reference_outputs(demo_model, test.sample(i))
        assert ours.shape == ref.shape == (1, 10) and ours.argmax() == ref.argmax()
        assert np.allclose(ours / step, np.round(ours / step))  # every output on the result format's grid
    with pytest.raises(BadInput, match="not an edgekit hls4ml manifest"):
        backend.artifact_from_file(out / "report.html")


def _module_with_adaptive_pools():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            x = self.pool(torch.relu(self.conv(x)))  # 8x8 → 2x2: AvgPool2d(4)
            return self.fc(torch.flatten(F.adaptive_max_pool2d(x, 1), 1))  # 2x2 → 1x1: global max

    torch.manual_seed(0)
    return Net().eval()


def test_adaptive_pools_are_rewritten_to_the_fixed_pools_they_equal():
    import torch

    from edgekit.backends.hls4ml_graph import prepare
    from edgekit.models import InputSpec

    net = _module_with_adaptive_pools()
    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    prepared = prepare(net, (InputSpec("x", (1, 1, 8, 8), "float32"),), {"x": x[:1]})
    kinds = {type(m).__name__ for m in prepared.module.modules()}
    assert {"AvgPool2d", "MaxPool2d"} <= kinds and not any(k.startswith("Adaptive") for k in kinds)
    assert len(prepared.rewrites) == 2 and all("(exact)" in line for line in prepared.rewrites)
    with torch.no_grad():
        before, after = net(torch.from_numpy(x)), prepared.module(torch.from_numpy(x))
    assert torch.allclose(before, after, rtol=0, atol=1e-6)
    assert type(net.pool).__name__ == "AdaptiveAvgPool2d"  # the user's module is left as it was
    assert prepared.output_shapes == [(3,)]


def test_a_pool_with_no_exact_equivalent_or_an_unknown_layer_is_one_line():
    import torch.nn as nn

    from edgekit.backends.hls4ml_graph import prepare
    from edgekit.models import InputSpec

    spec = (InputSpec("x", (1, 1, 7, 7), "float32"),)
    x = {"x": np.zeros((1, 1, 7, 7), np.float32)}
    with pytest.raises(BadInput, match=r"layer '1' \(AdaptiveAvgPool2d to \(3, 3\) from \(7, 7\)\).*not a multiple") as err:
        prepare(nn.Sequential(nn.Conv2d(1, 2, 1), nn.AdaptiveAvgPool2d(3)), spec, x)
    assert "\n" not in str(err.value)
    with pytest.raises(BadInput, match=r"layer '2' \(GELU\): hls4ml 1.3 has no PyTorch converter") as err:
        prepare(nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.GELU()), spec, x)
    assert "\n" not in str(err.value)


def test_an_onnx_only_model_is_refused_in_one_line(tmp_path, demo_onnx):
    from edgekit.backends.base import BuildContext, get_backend
    from edgekit.models import load_model
    from edgekit.plan import PrecisionPlan
    from edgekit.targets import load_target

    model = load_model(str(demo_onnx))
    with pytest.raises(BadInput, match="hls4ml builds from the PyTorch module.*ONNX only"):
        get_backend("hls4ml").build(onnx_path=demo_onnx, plan=PrecisionPlan("int8"), target=load_target("zcu104"),
                                    out_dir=tmp_path, context=BuildContext(model=model))


def test_fixed_point_formats_keep_small_weights_precise_and_accumulators_exact():
    from edgekit.backends.base import get_backend
    from edgekit.backends.hls4ml_config import Fixed, accumulator, fitted, width_of
    from edgekit.backends.hls4ml_graph import Range
    from edgekit.targets import load_target

    assert str(fitted(8, 0.1)) == "ap_fixed<8,-2,AP_RND_CONV,AP_SAT>"  # ±0.125 in steps of 2^-10
    assert str(fitted(8, 3.0)) == "ap_fixed<8,3,AP_RND_CONV,AP_SAT>"
    assert fitted(8, Range(0.0, 1.0)) == Fixed(8, 1, signed=False)  # [0, 2): 1.0 exactly, 7 fraction bits
    x, w = Fixed(8, 1, signed=False), fitted(8, 0.1)
    acc = accumulator(x, w, fan_in=9, bias=0.0)
    worst = 9 * (2 ** x.integer - 2 ** -x.fraction) * 2 ** (w.integer - 1)
    assert acc.exact and acc.fraction == x.fraction + w.fraction and worst < 2 ** (acc.integer - 1)
    assert width_of("int8", {}) == 8 and width_of("int4", {}) == 4 and width_of("int8", {"width": 12}) == 12
    with pytest.raises(BadInput, match="4 to 16 bits"):
        width_of("int8", {"width": 3})
    availability = get_backend("hls4ml").available(load_target("fpga"))
    assert availability.run is False and availability.check is (shutil.which("g++") is not None)
