"""Calibration: observers and scales, the Q/DQ and TensorRT writers, and the precision the runtime
really executes, checked by reading the built engine back."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.backends.base import calibration_runtime
from edgekit.calibrate import observers, scales, trt_cache
from edgekit.calibrate.run import CalibrationOptions, calibrate
from edgekit.data import Samples, demo_data, split
from edgekit.errors import BadInput
from edgekit.plan import PrecisionPlan
from edgekit.targets import load_target
from tests.conftest import run_cli


def _stats(values: np.ndarray) -> observers.TensorStats:
    s = observers.TensorStats("t")
    observers._first_pass(s, values)
    observers._prepare_histograms(s)
    observers._second_pass(s, values)
    return s


def test_methods_clip_outliers_that_minmax_keeps():
    rng = np.random.default_rng(0)
    relu = np.maximum(rng.normal(0, 1, 200_000), 0).astype(np.float32)
    relu[:5] = 40.0  # a handful of outliers
    s = _stats(relu)
    assert scales.activation_range(s, "minmax", symmetric=False)[1] == pytest.approx(40.0, rel=1e-3)
    for method in ("percentile", "entropy"):
        lo, hi = scales.activation_range(s, method, symmetric=False)
        assert lo == 0.0 and 2.5 < hi < 12, (method, hi)
    # MSE weighs the clipping error of those 5 values (35² each) against rounding and keeps them; on a
    # Laplace(b=1) tail it clips near the analytic 8-bit optimum, 9.89 b (Banner et al., ACIQ).
    laplace = rng.laplace(0, 1, 1_000_000).astype(np.float32)
    lo, hi = scales.activation_range(_stats(laplace), "mse", symmetric=True)
    assert 8.5 < hi < 11.5 and hi < np.abs(laplace).max()


def test_a_constant_tensor_gets_a_valid_scale():
    s = _stats(np.full(1000, 0.0, np.float32))
    p = scales.qparams(*scales.activation_range(s, "mse", symmetric=False), symmetric=False, method="mse")
    assert p.scale > 0 and 0 <= p.zero_point <= 255


def test_sentinel_mask_values_are_found_and_left_out_of_the_range():
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 2, (64, 32)).astype(np.float32)
    scores[:, 20:] += -1e4  # padded positions of an additive attention mask
    s = _stats(scores)
    assert s.sentinel and 5 < s.real_bound < 100
    lo, hi = scales.activation_range(s, "minmax", symmetric=False)
    assert lo > -100  # calibrated on the real values, not on -1e4
    assert not _stats(rng.normal(0, 2, 5000).astype(np.float32)).sentinel


def test_weight_scales_are_per_channel_symmetric():
    w = np.stack([np.linspace(-1, 1, 9), np.linspace(-0.01, 0.02, 9)]).astype(np.float32)
    s = scales.weight_scales(w, axis=0)
    assert s == pytest.approx([1 / 127, 0.02 / 127])
    q = scales.quantize_weight(w, s, 0)
    assert q.dtype == np.int8 and q.max() == 127 and q.min() >= -127


def test_tensorrt_cache_round_trips_in_tensorrt_format(tmp_path):
    assert trt_cache.version_code("8.6.1") == 8601 and trt_cache.version_code("10.3.0") == 100300
    wanted = {"input": 0.0078125, "conv1_out": 0.0312, "fc/out:0": 1.5e-3}
    path = tmp_path / "calibration.cache"
    trt_cache.write_cache(path, wanted, version="10.3.0", algorithm="EntropyCalibration2")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    assert all(re.fullmatch(r".+: [0-9a-f]{8}", line) for line in lines[1:])
    assert lines[1] == "input: 3c000000"  # 1/128 as float32 bits, big-endian hex
    version, algorithm, scales_back = trt_cache.read_cache(path)
    assert (version, algorithm) == (100300, "EntropyCalibration2")
    assert scales_back == {k: pytest.approx(np.float32(v), rel=0, abs=0) for k, v in wanted.items()}


@pytest.fixture(scope="module")
def demo_splits(demo_model):
    return split(demo_data(demo_model.inputs))


def _first_layer(path) -> str:
    return next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv")


def test_qdq_model_is_valid_runs_everywhere_and_openvino_runs_the_plan(tmp_path, demo_onnx, demo_splits):
    import onnxruntime as ort

    from edgekit.backends.base import get_backend
    from edgekit.profile import verify_precision

    host = load_target("host")
    first = _first_layer(demo_onnx)
    result = calibrate(demo_onnx, demo_splits.calibration, host, PrecisionPlan("int8", {first: "fp32"}), tmp_path)
    onnx.checker.check_model(onnx.load(str(result.qdq_path)), full_check=True)
    assert result.planned[first] == "fp32" and sum(p == "int8" for p in result.planned.values()) == 4
    feed = demo_splits.test.sample(0)
    ort_out = ort.InferenceSession(str(result.qdq_path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    backend = get_backend("openvino")
    plan = PrecisionPlan("int8", result.planned)
    artifact = backend.build(onnx_path=result.qdq_path, plan=plan, target=host, out_dir=tmp_path)
    engine = backend.load(artifact, target=host, threads=1)
    assert np.argmax(engine.run(feed)[0]) == np.argmax(ort_out)
    verified = verify_precision(engine, feed, result.planned)
    assert verified["executed"] == result.planned and not verified["mismatches"]
    assert all("I8" in verified["kernels"][layer] for layer, p in result.planned.items() if p == "int8")
    assert "I8" not in verified["kernels"][first]


def test_scales_json_and_tensorrt_files_for_a_jetson(tmp_path, demo_onnx, demo_splits):
    jetson = load_target("jetson")
    result = calibrate(demo_onnx, demo_splits.calibration, jetson, PrecisionPlan("int8"), tmp_path,
                       CalibrationOptions(method="entropy"), runtime=calibration_runtime(jetson))
    saved = json.loads((tmp_path / "scales.json").read_text())
    assert saved["activations"] == "symmetric int8"
    assert all(t["dtype"] == "int8" and t["zero_point"] == 0 for t in saved["tensors"].values())
    _, algorithm, cache = trt_cache.read_cache(tmp_path / "tensorrt" / "calibration.cache")
    assert algorithm == "EntropyCalibration2" and set(cache) == set(saved["tensors"])
    flags = (tmp_path / "tensorrt" / "layer_precisions.txt").read_text().strip()
    assert flags == ",".join(f"{layer}:int8" for layer in result.planned)
    model = onnx.load(str(result.qdq_path))
    zero_points = [i for i in model.graph.initializer if i.name.endswith("_zero_point")]
    assert zero_points and all(i.data_type in (TensorProto.INT8, TensorProto.INT32) for i in zero_points)


def test_bias_correction_removes_the_mean_shift(tmp_path, demo_onnx, demo_splits):
    import onnxruntime as ort

    def mean_error(bias_correction: bool) -> float:
        out = tmp_path / str(bias_correction)
        r = calibrate(demo_onnx, demo_splits.calibration, load_target("host"), PrecisionPlan("int8"), out,
                      CalibrationOptions(bias_correction=bias_correction))
        q = ort.InferenceSession(str(r.qdq_path), providers=["CPUExecutionProvider"])
        ref = ort.InferenceSession(str(demo_onnx), providers=["CPUExecutionProvider"])
        x = demo_splits.validation
        diffs = [q.run(None, x.sample(i))[0] - ref.run(None, x.sample(i))[0] for i in range(len(x))]
        return float(np.abs(np.mean(diffs, axis=0)).mean())

    assert mean_error(True) < mean_error(False)


def test_bias_correction_of_a_shared_bias_stays_with_its_layer(tmp_path):
    """torch.onnx stores equal constants once: every zero bias of one width, and LayerNorm's zero beta, is one
    tensor read by many nodes. Each layer's correction goes into a copy of its own; written into the shared
    tensor, the 6-layer encoder's corrections summed into every bias and beta (cosine 0.949 against 0.9998)."""
    import onnxruntime as ort

    from edgekit import graph
    from edgekit.models import load_model
    from examples.encoder import data

    onnx_path = graph.export_onnx(load_model("examples.encoder:build"), tmp_path / "encoder.onnx")
    model = onnx.load(onnx_path)
    shared = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for t in node.input:
            readers[t] = readers.get(t, 0) + 1
    assert any(readers.get(n.input[2], 0) > 1 for n in model.graph.node if n.op_type == "LayerNormalization")
    tokens = data(160)
    calibration = Samples({k: v[:80] for k, v in tokens.items()}, None, "calibration")
    reference = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def cosine(corrected: bool) -> float:
        r = calibrate(onnx_path, calibration, load_target("host"), PrecisionPlan("int8"), tmp_path / str(corrected),
                      CalibrationOptions(method="minmax", bias_correction=corrected))
        written = onnx.load(r.qdq_path)
        values = {i.name: numpy_helper.to_array(i) for i in written.graph.initializer}
        for node in written.graph.node:  # LayerNorm's beta is what it was
            if node.op_type == "LayerNormalization":
                np.testing.assert_array_equal(values[node.input[2]], shared[node.input[2]])
        q = ort.InferenceSession(str(r.qdq_path), providers=["CPUExecutionProvider"])
        found = []
        for i in range(80, 160):
            feed = {k: v[i:i + 1] for k, v in tokens.items()}
            a, b = q.run(None, feed)[0].ravel(), reference.run(None, feed)[0].ravel()
            found.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        return float(np.mean(found))

    assert cosine(True) >= cosine(False) - 1e-4


def test_a_weight_two_layers_share_is_quantized_for_both_and_stored_once(tmp_path):
    """Tied weights (one initializer read by two MatMuls, one bias by two Adds): both layers int8, the int8
    weight stored once (twice, it failed onnx.checker: 'initializer name is not unique')."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (16, 16)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"), helper.make_node("Add", ["h", "b"], ["h2"], name="add1"),
             helper.make_node("Relu", ["h2"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w"], ["y0"], name="mm2"), helper.make_node("Add", ["y0", "b"], ["y"], name="add2")]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(16, np.float32), "b")])
    path = tmp_path / "tied.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.normal(0, 1, (64, 4, 16)).astype(np.float32)
    r = calibrate(path, _samples(x), load_target("host"), PrecisionPlan("int8"), tmp_path / "out", CalibrationOptions())
    assert r.planned == {"mm1": "int8", "mm2": "int8"}
    written = onnx.load(r.qdq_path)
    assert sum(1 for i in written.graph.initializer if i.name.startswith("w_quantized")) == 1
    q, f = (ort.InferenceSession(str(m), providers=["CPUExecutionProvider"]) for m in (r.qdq_path, path))
    for i in range(4):
        ref = f.run(None, {"x": x[i:i + 1]})[0]
        assert np.abs(q.run(None, {"x": x[i:i + 1]})[0] - ref).max() < 0.05 * np.abs(ref).max()


def test_albert_shared_layers_run_int8(tmp_path):
    """A `transformers` ALBERT (every layer reads one set of weights): torch.onnx leaves `MatMul(x, Transpose(W))`
    for a shared weight, which calibration took for a product of two activations and kept float (1 of 13 weight
    layers int8). The export stores W transposed (graph.fold_weight_transposes): every weight layer runs int8."""
    result = run_cli("deploy", "-t", "host", "--model", "tests.transformer_models:albert", "--data",
                     "tests.transformer_models:albert_data", "--precision", "int8", "--out", str(tmp_path), "--json",
                     "--duration", "0.2", "--repeats", "20")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    saved = json.loads((tmp_path / "scales.json").read_text())
    float_layers = {name for name, p in report["precision"]["planned"].items() if p != "int8"}
    assert float_layers and all("two activations" in saved["demoted"][name] for name in float_layers)  # attention only
    assert sum(p == "int8" for p in report["precision"]["planned"].values()) == 13
    assert report["accuracy"]["cosine"] >= 0.999 and report["precision"]["mismatches"] == {}
    written = onnx.load(tmp_path / "model.int8.onnx")
    assert sum(1 for i in written.graph.initializer if i.data_type == TensorProto.INT8) == 2 * 7  # 7 weights (+ zero points)


def _masked_matmul_model(path):
    """x → x + mask (-1e4 on padded positions) → MatMul W: the layer must not be quantized."""
    mask = np.zeros((1, 4, 16), np.float32)
    mask[..., 10:] = -1e4
    w = np.random.default_rng(0).normal(0, 0.3, (16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "mask"], ["masked"], name="add_mask"),
         helper.make_node("MatMul", ["masked", "w"], ["y"], name="proj")],
        "masked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])],
        [numpy_helper.from_array(mask, "mask"), numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _samples(x: np.ndarray, name: str = "x") -> Samples:
    return Samples({name: x}, None, "test")


def test_layer_fed_by_sentinel_values_stays_float(tmp_path):
    path = _masked_matmul_model(tmp_path / "m.onnx")
    x = np.random.default_rng(1).normal(0, 1, (32, 1, 4, 16)).astype(np.float32)
    result = calibrate(path, _samples(x[:, 0]), load_target("host"), PrecisionPlan("int8"), tmp_path)
    assert result.planned["proj"] == "fp32" and "sentinel" in result.demoted["proj"]


def test_bad_calibration_inputs(tmp_path, demo_onnx, demo_splits):
    host = load_target("host")
    empty = demo_splits.calibration.subset(np.arange(0), "none")
    with pytest.raises(BadInput, match="is empty"):
        calibrate(demo_onnx, empty, host, PrecisionPlan("int8"), tmp_path)
    with pytest.raises(BadInput, match="not in the model"):
        calibrate(demo_onnx, demo_splits.calibration, host, PrecisionPlan("int8", {"conv_nowhere": "fp32"}), tmp_path)
    few = calibrate(demo_onnx, demo_splits.calibration, host, PrecisionPlan("int8"), tmp_path,
                    CalibrationOptions(samples=10_000))
    assert any("asked for 10000 calibration samples" in w for w in few.warnings)
    zeros = _samples(np.zeros((20, 1, 8, 8), np.float32), "input")
    constant = calibrate(demo_onnx, zeros, host, PrecisionPlan("int8"), tmp_path)
    assert any("is constant" in w for w in constant.warnings)
    assert all(p.scale > 0 for p in constant.params.values())


def test_nan_activations_are_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["x"], ["root"], name="sqrt"),
         helper.make_node("MatMul", ["root", "w"], ["y"], name="proj")],
        "nan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.ones((8, 4), np.float32), "w")])
    path = tmp_path / "nan.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    x = np.random.default_rng(0).normal(0, 1, (20, 8)).astype(np.float32)  # negative → sqrt is NaN
    with pytest.raises(BadInput, match="'root' holds .* NaN/Inf"):
        calibrate(path, _samples(x), load_target("host"), PrecisionPlan("int8"), tmp_path)


def test_deploy_int8_with_a_plan_file_reports_planned_and_executed(tmp_path, demo_onnx):
    first = _first_layer(demo_onnx)
    (tmp_path / "plan.yaml").write_text(f"default: int8\nlayers:\n  {first}: fp32\n")
    result = run_cli("deploy", "-t", "host", "--plan", str(tmp_path / "plan.yaml"), "--out", str(tmp_path / "run"),
                     "--json", "--duration", "0.2", "--repeats", "20")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    precision = report["precision"]
    assert precision["label"] == "mixed" and precision["planned"][first] == "fp32"
    assert precision["executed"] == precision["planned"] and precision["mismatches"] == {}
    assert report["accuracy"]["agreement"] >= 0.98
    for name in ("model.int8.onnx", "scales.json", "model.xml"):
        assert (tmp_path / "run" / name).is_file()


def test_encoder_int8_survives_its_attention_mask(tmp_path):
    result = run_cli("deploy", "-t", "host", "--model", "examples.encoder:build", "--data", "examples.encoder:data",
                     "--precision", "int8", "--out", str(tmp_path), "--json", "--duration", "0.2", "--repeats", "20")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # random weights: logits are small and close, so cosine, not top-1, is the measure here
    assert report["accuracy"]["cosine"] >= 0.95 and report["precision"]["mismatches"] == {}
    saved = json.loads((tmp_path / "scales.json").read_text())
    quantized = [t for t in saved["tensors"].values() if t["quantized"]]
    assert quantized and all(t["lo"] > -1e3 for t in quantized)  # no scale stretched over the -1e4 mask
    assert any("two activations" in why for why in saved["demoted"].values())  # attention matmuls stay float


def test_calibrate_command_for_a_device_that_is_not_here(tmp_path):
    result = run_cli("calibrate", "-t", "jetson", "--method", "minmax", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tensorrt" / "calibration.cache").read_text().startswith("TRT-100300-MinMaxCalibration\n")
    assert "build the engine on the device" in result.stdout


def test_plan_naming_a_missing_layer_is_one_line(tmp_path):
    (tmp_path / "plan.yaml").write_text("conv_nowhere: int8\n")
    result = run_cli("deploy", "-t", "host", "--plan", str(tmp_path / "plan.yaml"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "'conv_nowhere', which is not in the model" in result.stderr
