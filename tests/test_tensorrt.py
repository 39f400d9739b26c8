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
from edgekit.backends import tensorrt_dla
from edgekit.backends import tensorrt_versions as trt_versions
from edgekit.backends.base import get_backend
from edgekit.calibrate import trt_cache
from edgekit.errors import BadInput, MissingRuntime
from edgekit.plan import PrecisionPlan
from edgekit.targets import load_target
from tests.agents import Agent
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
    assert pending.startswith("trtexec --onnx=model.trt.onnx --saveEngine=model.engine --stronglyTyped")
    assert "--memPoolSize=workspace:1024M" in pending and "--timingCacheFile=tensorrt/timing.cache" in pending
    script = (out / "tensorrt" / "trtexec.sh").read_text()
    assert script.splitlines()[-1] == pending and "TensorRT 10.3.0, strongly typed" in script
    assert not {"--int8", "--fp16", "--calib", "--precisionConstraints"} & {w.split("=")[0] for w in shlex.split(script, comments=True)}
    assert "--calib" not in script  # not even as a comment: TensorRT 10.1 deprecated calibrators for explicit quantization
    assert report["build"]["strongly_typed"] and report["build"]["tensorrt_version"] == "10.3.0"
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
    # strongly typed: the int8 layers' surroundings in the Jetson's fp16 baseline, said by the types, fp32 at the edges
    scales = {inits[n.input[1]].dtype for n in source.graph.node if n.op_type == "DequantizeLinear"}
    casts = [n for n in source.graph.node if n.op_type == "Cast"]
    assert scales == {np.dtype(np.float16)} and casts and casts[-1].output[0] == source.graph.output[0].name
    assert source.graph.input[0].type.tensor_type.elem_type == source.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    runs = [ort.InferenceSession(str(out / name), options, providers=["CPUExecutionProvider"])
            for name in ("model.int8.onnx", "model.trt.onnx")]
    x = np.random.default_rng(0).random((1, 1, 8, 8), np.float32)
    name = runs[0].get_inputs()[0].name
    int8, typed = (r.run(None, {name: x})[0] for r in runs)
    np.testing.assert_allclose(typed, int8, atol=0.1)  # fp16 scales move a few values by one int8 step
    assert np.argmax(typed) == np.argmax(int8)


def _first_conv(onnx_path) -> str:
    return next(n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "Conv")


def test_strongly_typed_fp16_is_said_by_casts_and_no_flag(tmp_path, demo_onnx):
    first = _first_conv(demo_onnx)
    artifact = get_backend("tensorrt").build(onnx_path=demo_onnx, plan=PrecisionPlan("fp16", {first: "fp32"}),
                                             target=load_target("jetson"), out_dir=tmp_path)
    args = shlex.split(artifact.pending)
    assert artifact.path == tmp_path / "model.trt.onnx" and all(f.is_file() for f in artifact.files)
    assert "--stronglyTyped" in args and not [a for a in args if a.split("=")[0] in
                                              ("--fp16", "--int8", "--precisionConstraints", "--layerPrecisions")]
    source = onnx.load(str(artifact.path))
    fp16 = trt_backend.tensorrt_types.fp16_layers(source)
    convs = [n.name for n in source.graph.node if n.op_type in ("Conv", "Gemm")]
    assert first not in fp16 and set(fp16) == set(convs) - {first} and len(convs) == 5
    assert [n.op_type for n in source.graph.node].count("Cast") == 2  # the first conv reads the fp32 input: into fp16 after it, out to fp32
    fp32 = get_backend("tensorrt").build(onnx_path=demo_onnx, plan=PrecisionPlan("fp32"), target=load_target("jetson"),
                                         out_dir=tmp_path / "fp32")
    assert "Cast" not in {n.op_type for n in onnx.load(str(fp32.path)).graph.node}  # fp32 as the plan says: unchanged


def test_weakly_typed_tensorrt_pins_each_layer_in_flags_its_trtexec_takes(tmp_path, demo_onnx):
    """Xavier NX runs TensorRT 8.5 (JetPack 5.1): no strongly typed networks, so the same ONNX is built with
    the precision flags, and in the flags its trtexec has (no --builderOptimizationLevel, --skipInference)."""
    first = _first_conv(demo_onnx)
    artifact = get_backend("tensorrt").build(onnx_path=demo_onnx, plan=PrecisionPlan("fp16", {first: "fp32"}),
                                             target=load_target("xavier-nx"), out_dir=tmp_path)
    args = shlex.split(artifact.pending)
    assert "--fp16" in args and "--int8" not in args and "--precisionConstraints=obey" in args and "--stronglyTyped" not in args
    assert "--buildOnly" in args and not {"--skipInference", "--builderOptimizationLevel=3"} & set(args)
    layers = dict(item.split(":") for item in next(a for a in args if a.startswith("--layerPrecisions=")).split("=", 1)[1].split(","))
    assert layers[first] == "fp32" and set(layers.values()) == {"fp16", "fp32"} and len(layers) == 5
    outputs = next(a for a in args if a.startswith("--layerOutputTypes=")).split("=", 1)[1].split(",")
    assert len(outputs) == 4 and f"{first}:fp32" in outputs  # the classifier makes the network's output: left fp32
    assert "Cast" not in {n.op_type for n in onnx.load(str(artifact.path)).graph.node}
    nano = get_backend("tensorrt").build(onnx_path=demo_onnx, plan=PrecisionPlan("fp16"), target=load_target("jetson-nano"),
                                         out_dir=tmp_path / "nano")
    assert "--workspace=1024" in shlex.split(nano.pending)  # TensorRT 8.2: memory pools came in 8.4


@pytest.mark.parametrize("name", ["jetson-nano", "jetson-xavier-nx", "jetson-orin-nano", "jetson-agx-orin"])
def test_every_jetsons_trtexec_sh_takes_only_flags_its_tensorrt_accepts(tmp_path, demo_onnx, name):
    target = load_target(name)
    version = target.backend.options["tensorrt_version"]
    for precision in target.precisions.supported:
        if precision == "int8":
            continue  # an int8 build needs the Q/DQ model: the Orin Nano's is deploy's (test above)
        get_backend("tensorrt").build(onnx_path=demo_onnx, plan=PrecisionPlan(precision), target=target, out_dir=tmp_path / precision)
        assert trt_versions.check_trtexec((tmp_path / precision / "tensorrt" / "trtexec.sh").read_text(), version) == 1


@pytest.mark.parametrize(("line", "version", "says"), [
    ("trtexec --onnx=m.onnx --int8", "11.0", "TensorRT 11.0's trtexec does not take --int8"),
    ("trtexec --onnx=m.onnx --builderOptimizationLevel=3", "8.5.2", "does not take --builderOptimizationLevel"),
    ("trtexec --onnx=m.onnx --stronglyTyped", "8.6.1", "does not take --stronglyTyped"),
    ("trtexec --onnx=m.onnx --memPoolSize=workspace:1M", "8.2.1", "does not take --memPoolSize"),
    ("trtexec --onnx=m.onnx --madeUp", "10.3.0", "does not take --madeUp"),
])
def test_a_trtexec_flag_the_version_does_not_take_is_one_line(line, version, says):
    with pytest.raises(BadInput, match=says):
        trt_versions.check_trtexec(f"#!/bin/sh\n# trtexec --int8 in a comment is not read\n{line}\n", version)
    assert trt_versions.check_trtexec("# trtexec --calib=x\n", "11.0") == 0


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
    (_tiny_qdq(op=("", "Unique")), "Unique 'odd'", "not an op the ONNX parser of TensorRT 10.3.0 imports"),
    (_tiny_qdq(op=("", "STFT")), "STFT 'odd'", "not an op the ONNX parser of TensorRT 10.3.0 imports"),
    (_tiny_qdq(op=("com.example", "Swish")), "'odd' is com.example.Swish", "TensorRT plugin"),
])
def test_what_tensorrt_would_refuse_is_one_line_naming_the_node(model, named, says):
    with pytest.raises(BadInput) as err:
        trt_backend.check_source(model, "tiny.onnx")
    assert named in str(err.value) and says in str(err.value) and "\n" not in str(err.value)


def test_the_operator_matrix_is_the_devices_tensorrt_version():
    model = _tiny_qdq(op=("", "Gelu"), opset=20)  # ONNX-TensorRT imports Gelu from 10.0; JetPack 5's 8.5 does not
    assert trt_backend.check_source(model, "tiny.onnx", "10.3.0")["qdq_nodes"] == 3
    with pytest.raises(BadInput, match="Gelu 'odd' is not an op the ONNX parser of TensorRT 8.5.2 imports"):
        trt_backend.check_source(model, "tiny.onnx", "8.5.2")
    assert (trt_versions.max_opset("8.2.1"), trt_versions.max_opset("8.5.2"), trt_versions.max_opset("10.3.0")) == (13, 17, 20)


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


@pytest.mark.skipif(not NO_TENSORRT, reason="TensorRT is installed here: the job would go on to build the engine")
def test_the_int8_device_build_gets_all_it_needs_from_its_onnx_and_stops_only_at_tensorrt(tmp_path):
    """`deploy --device` to a Jetson-class inventory entry, its agent on loopback taking jobs for that Jetson:
    the int8 build job is sent the Q/DQ ONNX and the plan, builds everything up to the engine from them (no
    scales.json, no calibration cache: the Q/DQ model carries its scales) and fails only at the step that needs
    TensorRT, saying so. As far as this machine goes: the engine itself is built where TensorRT is."""
    assert run_cli("agent", "token", str(tmp_path / "token")).returncode == 0
    agent = Agent(tmp_path / "work", tmp_path / "token")
    try:
        (tmp_path / "devices.yaml").write_text(
            f"devices:\n  - {{name: orin-lab, target: jetson-orin-nano, url: '{agent.url}', token_file: token}}\n"
            f"  - {{name: agx-lab, target: jetson-agx-orin, url: '{agent.url}', token_file: token}}\n")
        result = run_cli("deploy", "--target", "jetson", "--precision", "int8", "--method", "minmax", "--equalization", "off",
                         "--device", "orin-lab", "--devices", str(tmp_path / "devices.yaml"), "--out", str(tmp_path / "run"))
        run_cli("deploy", "--target", "agx-orin", "--precision", "fp16", "--dla", "1", "--device", "agx-lab",
                "--devices", str(tmp_path / "devices.yaml"), "--out", str(tmp_path / "dla"))
        with agent.client() as client:
            jobs = sorted(client.jobs(), key=lambda j: j["created"])
    finally:
        agent.stop()
    assert "--useDLACore=1 --allowGPUFallback" in jobs.pop()["error"]  # the DLA core travels with the job
    assert [(j["kind"], j["target"], j["state"]) for j in jobs] == [("build", "jetson-orin-nano", "failed")]
    error = jobs[0]["error"]
    assert "scales.json" not in error and "calibration" not in error
    assert "built model.int8.onnx up to its last step" in error and "TensorRT is not installed" in error
    assert "trtexec --onnx=model.trt.onnx --saveEngine=model.engine --stronglyTyped" in error
    assert result.returncode != 0 and "Traceback" not in result.stderr and error.split(": trtexec")[0] in result.stderr
    built = next(p for p in (tmp_path / "work").rglob("model.trt.onnx") if jobs[0]["id"] in str(p))  # made from what it was sent
    assert {n.op_type for n in onnx.load(str(built)).graph.node} >= {"QuantizeLinear", "DequantizeLinear", "Cast"}
    assert not list((tmp_path / "work").rglob("calibration.cache"))


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
    the Python build asks of TensorRT's API, to check it asks what the trtexec line spells. `removed=True`
    leaves out what TensorRT 11 removed (BuilderFlag.INT8, FP16, OBEY_PRECISION_CONSTRAINTS), so a build
    that reached for them fails here. The real build is test_engine_on_the_device, where TensorRT and a GPU are."""

    float32, float16 = "fp32", "fp16"

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            pass

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class ProfilingVerbosity:
        DETAILED = "DETAILED"

    class NetworkDefinitionCreationFlag:
        EXPLICIT_BATCH, STRONGLY_TYPED = 0, 1

    class DeviceType:
        GPU, DLA = "GPU", "DLA"

    def __init__(self, layer_names, removed: bool = False):
        names = ["GPU_FALLBACK"] + ([] if removed else ["INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"])
        self.BuilderFlag = type("BuilderFlag", (), {name: name for name in names})
        self.layers = [type("Layer", (), {"name": n, "num_outputs": 1, "precision": None, "outputs": {},
                                          "set_output_type": lambda self, j, t: self.outputs.__setitem__(j, t)})()
                       for n in layer_names]
        self.config = type("Config", (), {"flags": set(), "pools": {}, "builder_optimization_level": 0})()
        self.network_flags = []
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
        builder = type("Builder", (), {"create_network": lambda _, flags: recorder.network_flags.append(flags) or Network(),
                                       "create_builder_config": lambda _: config,
                                       "build_serialized_network": lambda _, network, cfg: b"engine"})
        self.Builder, self.OnnxParser = lambda logger: builder(), Parser


def test_python_build_on_a_recording_standin_for_tensorrt_spells_the_trtexec_line(tmp_path):
    """TensorRT 8.5 (Xavier NX): weakly typed, the flags and per-layer precisions trtexec spells."""
    spec = trt_backend.BuildSpec(int8=True, fp16=True, layers={"conv_a": "fp16", "conv_b": "fp32"},
                                 outputs={"conv_a": "fp16"}, workspace_mb=512, optimization_level=4, version="8.5.2")
    (tmp_path / "tensorrt").mkdir()
    trt = _Recorder(["conv_a", "relu", "conv_b"])
    assert trt_backend.build_engine(trt, spec, tmp_path).read_bytes() == b"engine"
    config, layers = trt.config, {layer.name: layer for layer in trt.layers}
    assert trt.network_flags == [1 << 0]  # explicit batch, which TensorRT 8 must be asked for
    assert config.flags == {"INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"} and config.pools == {"WORKSPACE": 512 << 20}
    assert config.builder_optimization_level == 4 and config.profiling_verbosity == "DETAILED"
    assert (layers["conv_a"].precision, layers["conv_b"].precision, layers["relu"].precision) == ("fp16", "fp32", None)
    assert layers["conv_a"].outputs == {0: "fp16"} and layers["conv_b"].outputs == {} and (tmp_path / "tensorrt" / "timing.cache").read_bytes() == b"timing"
    args = shlex.split(spec.trtexec())
    assert {"--int8", "--fp16", "--precisionConstraints=obey", "--layerPrecisions=conv_a:fp16,conv_b:fp32",
            "--layerOutputTypes=conv_a:fp16", "--memPoolSize=workspace:512M", "--profilingVerbosity=detailed"} <= set(args)


@pytest.mark.parametrize("version", ["10.3.0", "11.2.0"])
def test_strongly_typed_build_on_a_standin_for_tensorrt_11_without_its_removed_flags(tmp_path, version):
    """TensorRT ≥ 10.1: a strongly typed network, no precision flag, no layer precision; DLA with GPU fallback.
    The stand-in has none of what TensorRT 11 removed: the build must not need it."""
    spec = trt_backend.BuildSpec(int8=True, fp16=True, workspace_mb=256, version=version, dla_core=1)
    (tmp_path / "tensorrt").mkdir()
    trt = _Recorder(["conv_a", "relu"], removed=True)
    assert trt_backend.build_engine(trt, spec, tmp_path).read_bytes() == b"engine"
    assert trt.network_flags == [1 << 1] and trt.config.flags == {"GPU_FALLBACK"}
    assert (trt.config.default_device_type, trt.config.DLA_core) == ("DLA", 1)
    assert all(layer.precision is None and not layer.outputs for layer in trt.layers)
    args = shlex.split(spec.trtexec())
    assert {"--useDLACore=1", "--allowGPUFallback"} <= set(args) and not {"--int8", "--fp16"} & set(args)
    assert ("--stronglyTyped" in args) == (version == "10.3.0")  # always on in 11, where the flag is a deprecated no-op
    trt_versions.check_trtexec(spec.trtexec(), version)


REMOVED_IN_TENSORRT_11 = ("BuilderFlag.INT8", "BuilderFlag.FP16", "BuilderFlag.BF16", "BuilderFlag.FP8", "INT8", "FP16",
                          "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "int8_calibrator",
                          "IInt8", "Calibrator", "calibration_profile", "quantization_flag", "platform_has_fast",
                          ".precision =", "set_output_type")


def test_the_strongly_typed_build_code_uses_no_api_tensorrt_11_removed():
    """NVIDIA's TensorRT 10.x → 11.x Python migration guide ("Removed Python APIs"): the build TensorRT ≥ 10.1
    runs (tensorrt_device.build_engine) names none of them; the weakly typed calls for TensorRT 8.x live in
    tensorrt_legacy, reached only when the spec is not strongly typed."""
    import ast
    import inspect

    from edgekit.backends import tensorrt_device

    code = inspect.getsource(tensorrt_device)
    assert not [name for name in REMOVED_IN_TENSORRT_11 if name in code]
    build = next(n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.FunctionDef) and n.name == "build_engine")
    legacy = [n for n in ast.walk(build) if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "tensorrt_legacy"]
    guard = next(n for n in ast.walk(build) if isinstance(n, ast.If) and ast.unparse(n.test) == "typed")
    in_else = {ast.unparse(n) for stmt in guard.orelse for n in ast.walk(stmt) if n in legacy}
    assert len(legacy) == 3 and in_else == {"tensorrt_legacy.workspace", "tensorrt_legacy.weak_typing"}
    assert "if typed else tensorrt_legacy.network_flags(trt)" in ast.unparse(build)


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


def test_dla_on_agx_orin_reports_the_layers_that_fall_back_to_the_gpu(tmp_path):
    result = run_cli("deploy", "--target", "jetson-agx-orin", "--dla", "0", "--precision", "fp16", "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    dla = report["build"]["dla"]
    assert dla["core"] == 0 and dla["dla_layers"] >= 5  # the convolutions, their ReLUs, the pooling, the classifier
    assert dla["gpu_fallback"] and all(why for why in dla["gpu_fallback"].values())
    assert any("ReduceMean is not a layer DLA runs" in why for why in dla["gpu_fallback"].values())
    assert any(line.startswith("DLA core 0:") and "fall back to the GPU" in line for line in report["build"]["summary"])
    args = shlex.split(report["build"]["pending"])
    assert {"--useDLACore=0", "--allowGPUFallback", "--stronglyTyped"} <= set(args) and "--fp16" not in args


def test_dla_checks_precision_and_the_int8_layers_run_there(tmp_path, jetson_int8):
    out, report = jetson_int8
    target = tensorrt_dla.with_dla(load_target("agx-orin"), 1)
    plan = PrecisionPlan("int8", report["precision"]["planned"])
    int8 = get_backend("tensorrt").build(onnx_path=out / "model.int8.onnx", plan=plan, target=target, out_dir=tmp_path / "int8")
    fallback = int8.notes["dla"]["gpu_fallback"]
    assert not [name for name in plan.layers if name in fallback]  # every int8 conv and the classifier on DLA
    fp32 = get_backend("tensorrt").build(onnx_path=out / "model.onnx", plan=PrecisionPlan("fp32"), target=target,
                                         out_dir=tmp_path / "fp32")
    assert fp32.notes["dla"]["dla_layers"] == 0 and all("DLA runs fp16 and int8 only" in why
                                                        for why in fp32.notes["dla"]["gpu_fallback"].values())


@pytest.mark.parametrize(("target", "core", "says"), [
    ("jetson-orin-nano", "0", "target jetson-orin-nano has no DLA core"),
    ("jetson-agx-orin", "2", "--dla 2: target jetson-agx-orin has DLA cores 0 to 1"),
    ("host", "0", "target host has no DLA core"),
])
def test_dla_where_there_is_none_is_one_line(tmp_path, target, core, says):
    result = run_cli("deploy", "--target", target, "--dla", core, "--precision", "fp32", "--out", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
    assert says in result.stderr


def test_fp16_is_the_float_baseline_on_gpu_targets():
    assert {name: load_target(name).float_baseline for name in ("jetson", "jetson-nano", "agx-orin", "host", "rpi5")} == \
        {"jetson": "fp16", "jetson-nano": "fp16", "agx-orin": "fp16", "host": "fp32", "rpi5": "fp32"}


def test_mixed_on_a_jetson_is_weighed_against_fp16(tmp_path):
    """The float engine a Jetson user ships is fp16: mixed keeps its float layers there and compares with it."""
    result = run_cli("deploy", "--target", "jetson", "--precision", "mixed", "--method", "minmax", "--equalization", "off",
                     "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    mixed, analysis = report["precision"]["mixed"], json.loads((tmp_path / "sensitivity.json").read_text())
    assert mixed["baseline"] == "fp16" and "fp16" in mixed["reason"] and "fp32" not in mixed["reason"]
    assert analysis["float_precision"] == "fp16" and "fp16 rate minus int8 rate" in analysis["latency"]["per_layer"]
    assert set(report["precision"]["planned"].values()) <= {"int8", "fp16"}
