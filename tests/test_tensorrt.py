"""TensorRT (Jetson targets): everything up to the engine is built and checked here, for real: the
ONNX TensorRT parses, held to TensorRT's Q/DQ rules, the calibration files, the trtexec line, and the
accuracy of that ONNX in ONNX Runtime. The engine step itself needs TensorRT and an NVIDIA GPU; its
tests skip without them."""

from __future__ import annotations

import importlib.util
import json
import shlex

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.backends import tensorrt as trt_backend
from edgekit.backends.base import get_backend
from edgekit.calibrate import trt_cache
from edgekit.errors import BadInput, MissingRuntime
from edgekit.plan import PrecisionPlan
from edgekit.targets import load_target
from tests.conftest import run_cli

NO_TENSORRT = importlib.util.find_spec("tensorrt") is None


@pytest.fixture(scope="module")
def jetson_int8(tmp_path_factory):
    """One real `edgekit deploy --target jetson --precision int8` of the demo."""
    out = tmp_path_factory.mktemp("jetson-int8")
    result = run_cli("deploy", "--target", "jetson", "--precision", "int8", "--method", "minmax", "--equalization", "off",
                     "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_deploy_to_a_jetson_builds_everything_up_to_the_engine(jetson_int8):
    out, report = jetson_int8
    for name in ("model.int8.onnx", "model.trt.onnx", "tensorrt/calibration.cache", "tensorrt/layer_precisions.txt",
                 "tensorrt/trtexec.sh"):
        assert (out / name).is_file(), name
    assert not (out / "model.engine").exists()  # built on the device, not here
    assert report["latency_ms"]["kind"] == "predicted"
    assert "build the engine on the device" in report["status"] and report["build"]["pending"] in report["status"]
    pending = report["build"]["pending"]
    assert pending.startswith("trtexec --onnx=model.trt.onnx --saveEngine=model.engine --int8")
    assert "--memPoolSize=workspace:1024M" in pending and "--timingCacheFile=tensorrt/timing.cache" in pending
    assert (out / "tensorrt" / "trtexec.sh").read_text().splitlines()[-1] == pending
    version, _, scales = trt_cache.read_cache(out / "tensorrt" / "calibration.cache")
    assert version == 100300 and scales and all(s > 0 for s in scales.values())
    flags = (out / "tensorrt" / "layer_precisions.txt").read_text().strip()
    assert flags == ",".join(f"{layer}:{p}" for layer, p in report["precision"]["planned"].items())
    accuracy = report["accuracy"]
    assert "ONNX Runtime" in accuracy["where"] and "not TensorRT" in accuracy["where"]
    assert accuracy["agreement"] >= 0.98 and accuracy["test"] >= accuracy["reference"] - 0.02


def test_engine_source_is_the_qdq_model_in_the_form_tensorrt_parses(jetson_int8):
    import onnxruntime as ort

    out, _ = jetson_int8
    qdq, source = onnx.load(str(out / "model.int8.onnx")), onnx.load(str(out / "model.trt.onnx"))
    onnx.checker.check_model(source, full_check=True)
    inits = {i.name: numpy_helper.to_array(i) for i in source.graph.initializer}
    dequantize = [n for n in source.graph.node if n.op_type == "DequantizeLinear"]
    assert dequantize and all(inits[n.input[0]].dtype == np.int8 for n in dequantize if n.input[0] in inits)
    assert all(inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any()
               for n in source.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    biases = {i.name for i in qdq.graph.initializer if i.data_type == TensorProto.INT32}
    assert any(n.input[0] in biases for n in qdq.graph.node if n.op_type == "DequantizeLinear")  # edgekit's, folded here
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    runs = [ort.InferenceSession(str(out / name), options, providers=["CPUExecutionProvider"])
            for name in ("model.int8.onnx", "model.trt.onnx")]
    x = np.random.default_rng(0).random((1, 1, 8, 8), np.float32)
    name = runs[0].get_inputs()[0].name
    np.testing.assert_array_equal(*(r.run(None, {name: x})[0] for r in runs))  # the fold is exact


def _first_conv(onnx_path) -> str:
    return next(n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "Conv")


def test_trtexec_line_pins_each_layer_to_its_plan(tmp_path, demo_onnx):
    first = _first_conv(demo_onnx)
    artifact = get_backend("tensorrt").build(onnx_path=demo_onnx, plan=PrecisionPlan("fp16", {first: "fp32"}),
                                             target=load_target("jetson"), out_dir=tmp_path)
    args = shlex.split(artifact.pending)
    assert artifact.path == tmp_path / "model.trt.onnx" and all(f.is_file() for f in artifact.files)
    assert "--fp16" in args and "--int8" not in args and "--precisionConstraints=obey" in args
    layers = dict(item.split(":") for item in next(a for a in args if a.startswith("--layerPrecisions=")).split("=", 1)[1].split(","))
    assert layers[first] == "fp32" and set(layers.values()) == {"fp16", "fp32"} and len(layers) == 5
    outputs = next(a for a in args if a.startswith("--layerOutputTypes=")).split("=", 1)[1].split(",")
    assert len(outputs) == 4 and f"{first}:fp32" in outputs  # the classifier makes the network's output: left fp32
    fp32 = get_backend("tensorrt").build(onnx_path=demo_onnx, plan=PrecisionPlan("fp32"), target=load_target("jetson"),
                                         out_dir=tmp_path / "fp32")
    assert not {"--fp16", "--int8", "--precisionConstraints=obey"} & set(shlex.split(fp32.pending))


def _tiny_qdq(*, zero_point: int = 0, zp_type=np.int8, weight_axis: int = 0, opset: int = 17, op: tuple = ()) -> onnx.ModelProto:
    """x → Q/DQ (per tensor) → Conv (int8 weights per output channel, int32 bias) → y."""
    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (4, 2, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(zero_point, zp_type), "zp"),
             numpy_helper.from_array(weights, "w_q"), numpy_helper.from_array(np.full(4 if weight_axis == 0 else 2, 0.01, np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(4 if weight_axis == 0 else 2, np.int8), "w_zp"),
             numpy_helper.from_array(np.arange(4, dtype=np.int32), "b_q"), numpy_helper.from_array(np.full(4, 2e-4, np.float32), "b_s")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["x_q"], name="x_QuantizeLinear"),
             helper.make_node("DequantizeLinear", ["x_q", "s", "zp"], ["x_dq"], name="x_DequantizeLinear"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], name="w_DequantizeLinear", axis=weight_axis),
             helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], name="b_DequantizeLinear", axis=0),
             helper.make_node("Conv", ["x_dq", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    if op:
        nodes.append(helper.make_node(op[1], ["y"], ["z"], name="odd", domain=op[0]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("z" if op else "y", TensorProto.FLOAT, None)], inits)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(op[0], 1)] if op and op[0] else [])
    return helper.make_model(graph, opset_imports=opsets)


def test_a_valid_tiny_qdq_model_passes_and_its_int32_bias_is_folded():
    model = _tiny_qdq()
    counts = trt_backend.check_source(model, "tiny.onnx")
    assert counts["qdq_nodes"] == 3 and counts["per_channel_weights"] == 1 and counts["int32_dequantize"] == 1
    assert trt_backend.fold_int32_dequantize(model) == 1
    bias = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}["b"]
    np.testing.assert_array_equal(bias, np.arange(4, dtype=np.float32) * np.float32(2e-4))


@pytest.mark.parametrize(("model", "named", "says"), [
    (_tiny_qdq(zero_point=3), "x_QuantizeLinear", "zero point 3 (asymmetric)"),
    (_tiny_qdq(zero_point=128, zp_type=np.uint8), "x_QuantizeLinear", "uint8 zero point"),
    (_tiny_qdq(weight_axis=1), "w_DequantizeLinear", "axis 0 for Conv 'conv'"),
    (_tiny_qdq(opset=12), "tiny.onnx", "opset 12"),
    (_tiny_qdq(op=("", "Unique")), "Unique 'odd'", "not an op TensorRT's ONNX parser imports"),
    (_tiny_qdq(op=("com.example", "Swish")), "'odd' is com.example.Swish", "TensorRT plugin"),
])
def test_what_tensorrt_would_refuse_is_one_line_naming_the_node(model, named, says):
    with pytest.raises(BadInput) as err:
        trt_backend.check_source(model, "tiny.onnx")
    assert named in str(err.value) and says in str(err.value) and "\n" not in str(err.value)


def test_an_asymmetric_zero_point_stops_deploy_with_one_line(tmp_path, jetson_int8):
    out, _ = jetson_int8
    model = onnx.load(str(out / "model.int8.onnx"))
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    zero = next(i for i in model.graph.initializer if i.name == q.input[2])
    zero.CopyFrom(numpy_helper.from_array(np.array(5, np.int8), zero.name))
    onnx.save(model, str(tmp_path / "asymmetric.onnx"))
    # the model carries its own Q/DQ: built as it is (no calibration; the Jetson's default would calibrate it)
    result = run_cli("deploy", "--target", "jetson", "--precision", "fp32", "--model", str(tmp_path / "asymmetric.onnx"),
                     "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
    assert f"QuantizeLinear '{q.name}': zero point 5 (asymmetric)" in result.stderr


@pytest.mark.skipif(not NO_TENSORRT, reason="TensorRT is installed here: this checks the machine without it")
def test_here_it_builds_up_to_the_engine_and_checks_in_onnx_runtime(tmp_path):
    availability = get_backend("tensorrt").available(load_target("jetson"))
    assert availability.build and not availability.run and availability.check
    assert "build the engine on the device" in availability.reason and "ONNX Runtime" in availability.check_how
    (tmp_path / "model.engine").write_bytes(b"not here")
    artifact = get_backend("tensorrt").artifact_from_file(tmp_path / "model.engine")
    with pytest.raises(MissingRuntime, match=r"edgekit\[tensorrt\]"):
        get_backend("tensorrt").load(artifact, target=load_target("jetson"), threads=1)


class _Recorder:
    """Stand-in for the `tensorrt` module, which cannot be installed here (it needs CUDA): records what
    the Python build asks of TensorRT's API, to check it asks what the trtexec line spells. The real
    build is exercised by test_engine_on_the_device where TensorRT and a GPU are present."""

    float32, float16 = "fp32", "fp16"

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            pass

    class BuilderFlag:
        INT8, FP16, OBEY_PRECISION_CONSTRAINTS = "INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class ProfilingVerbosity:
        DETAILED = "DETAILED"

    def __init__(self, layer_names):
        self.layers = [type("Layer", (), {"name": n, "num_outputs": 1, "precision": None, "outputs": {},
                                          "set_output_type": lambda self, j, t: self.outputs.__setitem__(j, t)})()
                       for n in layer_names]
        self.config = type("Config", (), {"flags": set(), "pools": {}})()
        recorder = self

        class Network:
            num_layers = len(self.layers)

            def get_layer(self, i):
                return recorder.layers[i]

        class Parser:
            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                return path.endswith("model.trt.onnx")

        class Cache:
            def serialize(self):
                return b"timing"

        config = self.config
        config.set_flag = lambda flag: config.flags.add(flag)
        config.set_memory_pool_limit = lambda pool, size: config.pools.__setitem__(pool, size)
        config.create_timing_cache = lambda data: Cache()
        config.set_timing_cache = lambda cache, ignore_mismatch: True
        config.get_timing_cache = lambda: Cache()
        builder = type("Builder", (), {"create_network": lambda _, flags: Network(),
                                       "create_builder_config": lambda _: config,
                                       "build_serialized_network": lambda _, network, cfg: b"engine"})
        self.Builder, self.OnnxParser = lambda logger: builder(), Parser


def test_python_build_on_a_recording_standin_for_tensorrt_spells_the_trtexec_line(tmp_path):
    spec = trt_backend.BuildSpec(int8=True, fp16=True, layers={"conv_a": "fp16", "conv_b": "fp32"},
                                 outputs={"conv_a": "fp16"}, workspace_mb=512, optimization_level=4)
    (tmp_path / "tensorrt").mkdir()
    trt = _Recorder(["conv_a", "relu", "conv_b"])
    assert trt_backend.build_engine(trt, spec, tmp_path).read_bytes() == b"engine"
    config, layers = trt.config, {layer.name: layer for layer in trt.layers}
    assert config.flags == {"INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"} and config.pools == {"WORKSPACE": 512 << 20}
    assert config.builder_optimization_level == 4 and config.profiling_verbosity == "DETAILED"
    assert (layers["conv_a"].precision, layers["conv_b"].precision, layers["relu"].precision) == ("fp16", "fp32", None)
    assert layers["conv_a"].outputs == {0: "fp16"} and layers["conv_b"].outputs == {} and (tmp_path / "tensorrt" / "timing.cache").read_bytes() == b"timing"
    args = shlex.split(spec.trtexec())
    assert {"--int8", "--fp16", "--precisionConstraints=obey", "--layerPrecisions=conv_a:fp16,conv_b:fp32",
            "--layerOutputTypes=conv_a:fp16",
            "--memPoolSize=workspace:512M", "--builderOptimizationLevel=4", "--profilingVerbosity=detailed"} <= set(args)


def test_engine_on_the_device(tmp_path, jetson_int8):
    trt = pytest.importorskip("tensorrt", reason="building and running the engine needs TensorRT (on the Jetson, JetPack)")
    found, why = trt_backend._tensorrt()
    if found is None:
        pytest.skip(f"building and running the engine needs an NVIDIA GPU: {why}")
    out, report = jetson_int8
    plan = PrecisionPlan("int8", report["precision"]["planned"])
    source = onnx.load(str(out / "model.trt.onnx"))
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "model.trt.onnx").write_bytes((out / "model.trt.onnx").read_bytes())
    engine_path = trt_backend.build_engine(trt, trt_backend.build_spec(source, plan, load_target("jetson")), tmp_path)
    engine = trt_backend.TensorRTEngine(trt, engine_path)
    twin = trt_backend.QdqTwin(tmp_path / "model.trt.onnx", threads=1)
    feed = {"input": np.random.default_rng(0).random((1, 1, 8, 8), np.float32)}
    assert np.argmax(engine.run(feed)[0]) == np.argmax(twin.run(feed)[0])
    assert engine.layer_times(feed, 5)
    executed = engine.executed(feed, list(plan.layers))
    assert executed and all(e.precision == "int8" for e in executed.values())
