"""The int8 graph edgekit writes beyond the planned layers: residual joins and pools kept in int8,
7-bit weights where the CPU's int8 dot product saturates, cross-layer equalization, and the measured
choice among range methods and equalization."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgekit.calibrate import equalize
from edgekit.calibrate.run import CalibrationOptions, calibrate
from edgekit.data import Samples
from edgekit.plan import PrecisionPlan
from edgekit.targets import load_target


def _residual_net(clip: bool):
    """conv-bn-act → [expand 1x1 → act → depthwise 3x3 → act → project 1x1] + shortcut → mean-pool → fc,
    with channel ranges made unequal on purpose (what equalization is for)."""
    import torch
    import torch.nn as nn

    act = (lambda: nn.ReLU6()) if clip else (lambda: nn.ReLU())

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), act())
            self.expand = nn.Sequential(nn.Conv2d(8, 32, 1), act())
            self.depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), act())
            self.project = nn.Conv2d(32, 8, 1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = self.stem(x)
            x = x + self.project(self.depthwise(self.expand(x)))
            return self.fc(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        gains = torch.logspace(-1.5, 0.5, 32)  # output channels 30x apart in range
        net.expand[0].weight.mul_(gains.view(-1, 1, 1, 1) / 4)
        net.expand[0].bias.mul_(gains / 4)
    return net


def _export(net, path) -> None:
    import torch

    torch.onnx.export(net, (torch.zeros(1, 1, 12, 12),), str(path), input_names=["input"], dynamo=False, opset_version=17)


def _samples(n: int = 48) -> Samples:
    rng = np.random.default_rng(0)
    return Samples({"input": rng.uniform(0, 1, (n, 1, 12, 12)).astype(np.float32)}, None, "random")


def _run(path, feeds) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(None, f)[0] for f in feeds]


@pytest.fixture(scope="module")
def residual_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "model.onnx"
    _export(_residual_net(clip=True), path)
    return path


def test_residual_joins_and_pools_read_int8_and_openvino_fuses_the_join(tmp_path, residual_onnx):
    from edgekit.backends.base import get_backend

    host = load_target("host")
    result = calibrate(residual_onnx, _samples(), host, PrecisionPlan("int8"), tmp_path, CalibrationOptions(method="minmax"))
    model = onnx.load(str(result.qdq_path))
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("Add", "ReduceMean", "GlobalAveragePool"):
            fed = [producers[t].op_type for t in node.input if t in producers]
            assert fed and all(op == "DequantizeLinear" for op in fed), (node.name, fed)
    assert len(result.summary.links) == 2  # the join and the pool
    backend = get_backend("openvino")
    artifact = backend.build(onnx_path=result.qdq_path, plan=PrecisionPlan("int8", result.planned), target=host, out_dir=tmp_path)
    engine = backend.load(artifact, target=host, threads=1)
    compiled = engine._per_layer_factory()
    joined = [op.get_rt_info()["originalLayersNames"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()
              if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
    add = next(n.name for n in model.graph.node if n.op_type == "Add")
    assert any(add in names.split(",") for names in joined), "the residual Add is not fused into a convolution"


@pytest.mark.parametrize("target, bound", [("host", None), ("jetson", 127)])
def test_weights_use_7_bits_where_int8_dot_products_saturate(tmp_path, residual_onnx, target, bound):
    t = load_target(target)
    bound = bound or (63 if t.quantization.weight_bits == 7 else 127)
    calibrate(residual_onnx, _samples(), t, PrecisionPlan("int8"), tmp_path, CalibrationOptions(method="minmax", equalization="off"))
    model = onnx.load(str(tmp_path / "model.int8.onnx"))
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("weight_quantized")]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == bound
    assert f"±{bound}" in json.loads((tmp_path / "scales.json").read_text())["weights"]


def test_host_weight_bits_follow_the_isa():
    from edgekit.host import detect_host_figures, has_vnni

    figures = detect_host_figures()
    x86 = any(f in figures["isa"] for f in ("AVX2", "AVX-512"))
    expected = 7 if x86 and not has_vnni(tuple(figures["isa"])) else 8
    assert load_target("host").quantization.weight_bits == expected


@pytest.mark.parametrize("clip", [False, True])
def test_equalization_keeps_the_function_and_narrows_channel_ranges(tmp_path, clip):
    from edgekit.calibrate import observers

    path = tmp_path / "model.onnx"
    _export(_residual_net(clip), path)
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    pairs = equalize.find_pairs(model, inits)
    assert [p.clip for p in pairs] == [6.0 if clip else None] * 2  # expand → depthwise, depthwise → project
    samples = _samples()
    maxima = observers.channel_maxima(model, samples, equalize.clipped_outputs(model, pairs))
    equalized, spread = equalize.equalize(model, pairs, maxima)
    onnx.save(equalized, str(tmp_path / "eq.onnx"))
    feeds = [samples.sample(i) for i in range(len(samples))]
    for a, b in zip(_run(path, feeds), _run(tmp_path / "eq.onnx", feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    first = spread[pairs[0].first]
    assert first["range_spread_after"] < first["range_spread_before"] / 3


def test_auto_measures_every_method_and_equalization_and_keeps_the_closest(tmp_path, residual_onnx):
    result = calibrate(residual_onnx, _samples(), load_target("host"), PrecisionPlan("int8"), tmp_path)
    saved = json.loads((tmp_path / "scales.json").read_text())
    errors = saved["selection"]["output_error_vs_fp32"]
    assert set(errors) == {f"{v}/{m}" for v in ("plain", "equalized") for m in ("minmax", "percentile", "entropy", "mse")}
    best = min(errors, key=errors.get)
    assert best == f"{'equalized' if result.equalization['used'] else 'plain'}/{result.method}" == \
        f"{'equalized' if saved['equalization']['used'] else 'plain'}/{saved['method']}"
    assert (tmp_path / "model.equalized.onnx").exists() == result.equalization["used"]
    fixed = calibrate(residual_onnx, _samples(), load_target("host"), PrecisionPlan("int8"), tmp_path / "fixed",
                      CalibrationOptions(method="mse", equalization="off"))
    assert fixed.method == "mse" and not fixed.selection and not fixed.equalization["used"]
