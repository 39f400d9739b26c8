"""LiteRT for the Raspberry Pi: the PyTorch module converted by litert-torch, int8 from edgekit's own
calibration, and the .tflite checked in ai-edge-litert on this machine. The Pi itself is reached through
the edgekit agent, so its latency stays predicted; nothing here is mocked."""

import json
import platform

import numpy as np
import onnx
import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def rpi5_int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("rpi5-int8")
    result = run_cli("deploy", "--target", "rpi5", "--precision", "int8", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout), result.stderr


@pytest.fixture(scope="module")
def demo(demo_model, demo_onnx):
    from edgekit.data import demo_data, split

    return demo_model, demo_onnx, split(demo_data(demo_model.inputs))


def _build(demo, out_dir, plan, *, target=None, onnx_path=None, scales=None, model=None):
    from edgekit.backends.base import BuildContext, get_backend
    from edgekit.targets import load_target

    demo_model, demo_onnx, splits = demo
    context = BuildContext(model=model or demo_model, float_onnx=demo_onnx, calibration=splits.calibration, scales=scales)
    return get_backend("tflite").build(onnx_path=onnx_path or demo_onnx, plan=plan, target=target or load_target("rpi5"),
                                       out_dir=out_dir, context=context)


def _agreement(engine, demo, n=100):
    from edgekit import graph

    model, _, splits = demo
    ours = [engine.run(splits.test.sample(i))[0] for i in range(n)]
    theirs = [graph.reference_outputs(model, splits.test.sample(i))[0] for i in range(n)]
    agree = np.mean([a.argmax() == b.argmax() for a, b in zip(ours, theirs, strict=True)])
    return agree, max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True))


def test_rpi5_int8_is_full_integer_and_agrees_with_pytorch(rpi5_int8):
    out, report, stderr = rpi5_int8
    assert report["accuracy"]["agreement"] >= 0.99 and report["accuracy"]["samples"] > 100
    assert f"on this {platform.machine()} host" in report["accuracy"]["where"] and "not the Raspberry Pi 5" in report["accuracy"]["where"]
    assert report["latency_ms"]["kind"] == "predicted"  # never a latency of this machine labelled as the Pi's
    assert stderr == ""  # the converter's and interpreter's C++ logs stay off the user's terminal
    assert set(report["build"]["executed"].values()) == {"int8"}
    ranges = report["build"]["int8"]["activation_ranges"]
    assert ranges["edgekit"] >= 6 and report["build"]["int8"]["calibration"]["samples"] == report["data"]["splits"]["calibration"]

    from ai_edge_litert.interpreter import Interpreter  # the file runs in plain LiteRT, no edgekit

    interpreter = Interpreter(model_path=str(out / report["artifacts"]["engine"]))
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()
    compute = [op for op in ops if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert len(compute) == 5 and all(op["operand_types"][0] == np.int8 for op in compute)
    assert interpreter.get_input_details()[0]["dtype"] == np.float32  # int8_io is off: QUANTIZE at the input


def test_int8_weights_and_scales_are_edgekits(rpi5_int8):
    """The .tflite holds the very int8 weights of edgekit's Q/DQ model (equalized, on its grid) and the
    activation scales of scales.json: LiteRT runs edgekit's calibration, not a second one."""
    from edgekit.backends import tflite_graph as tg

    out, report, _ = rpi5_int8
    fb = tg.read((out / report["artifacts"]["engine"]).read_bytes())
    graph = fb.subgraphs[0]
    qdq = onnx.load(str(out / "model.int8.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in qdq.graph.initializer}
    makers = {n.output[0]: n for n in qdq.graph.node}
    nodes = {n.name: n for n in qdq.graph.node}
    checked = 0
    for op in graph.operators:
        name = graph.tensors[op.outputs[0]].name.decode()
        if name in nodes:
            weight = inits[makers[nodes[name].input[1]].input[0]]  # DequantizeLinear(int8 weight)
            ours = tg.onnx_weight_as_tflite(nodes[name], weight, tg.op_name(fb, op))
            assert np.array_equal(ours, tg.constant(fb, op.inputs[1])), name
            checked += 1
    assert checked == 5
    scales = json.loads((out / "scales.json").read_text())["tensors"]
    by_name = {t.name.decode(): t for t in graph.tensors}
    for tensor, edgekit_name in report["build"]["int8"]["activation_ranges"]["edgekit_tensors"].items():
        assert by_name[tensor].quantization.scale[0] == pytest.approx(scales[edgekit_name]["scale"], rel=1e-6)


def test_fp32_build_agrees_with_pytorch(demo, tmp_path):
    from edgekit.backends.tflite import TFLiteEngine
    from edgekit.plan import PrecisionPlan

    artifact = _build(demo, tmp_path, PrecisionPlan("fp32"))
    assert artifact.path.name == "model_fp32.tflite" and artifact.pending is None
    engine = TFLiteEngine(artifact.path, threads=2)
    agree, max_error = _agreement(engine, demo)
    assert agree == 1.0 and max_error < 1e-3
    assert engine.layer_times(demo[2].test.sample(0), 3) == []  # no per-op profiler in LiteRT's Python API
    assert "profiler" in artifact.notes["per_layer_times"]
    executed = engine.executed({}, list(artifact.notes["executed"]))  # read back from the .tflite
    assert len(executed) == 5 and {e.precision for e in executed.values()} == {"fp32"}


def test_fp16_build_stores_fp16_weights_and_agrees(demo, tmp_path):
    from edgekit.backends import tflite_graph as tg
    from edgekit.backends.tflite import TFLiteEngine
    from edgekit.plan import PrecisionPlan

    artifact = _build(demo, tmp_path, PrecisionPlan("fp16"))
    fb = tg.read(artifact.path.read_bytes())
    tensors = fb.subgraphs[0].tensors
    stored = [tg.type_names()[t.type] for i, t in enumerate(tensors) if tg.constant(fb, i) is not None]
    assert stored.count("float16") >= 5  # every filter (and bias) stored as fp16
    agree, max_error = _agreement(TFLiteEngine(artifact.path, threads=2), demo)
    assert agree >= 0.99 and 0 < max_error < 0.05  # fp16 weights: close to PyTorch, not bit-equal
    assert "FORCE_FP16" in artifact.notes["fp16_weights"]


def test_mixed_plan_keeps_float_layers_float_with_int8_io(demo, tmp_path):
    """A layer the plan keeps in fp32 stays a float op in the .tflite; `int8_io: true` (a backend
    option of the target) makes the model's input int8, and the engine quantizes float data for it."""
    from edgekit.backends.tflite import TFLiteEngine
    from edgekit.calibrate.run import CalibrationOptions, calibrate
    from edgekit.plan import PrecisionPlan
    from edgekit.targets import load_target

    target = load_target("rpi5")
    target = target.model_copy(update={"backend": target.backend.model_copy(
        update={"options": {**target.backend.options, "int8_io": True}})})
    model, demo_onnx, splits = demo
    from edgekit.calibrate.qdq import quantizable_layers

    last = list(quantizable_layers(onnx.load(str(demo_onnx))))[-1]
    options = CalibrationOptions(method="minmax", equalization="off")  # one candidate: fast
    result = calibrate(demo_onnx, splits.calibration, target, PrecisionPlan("int8", {last: "fp32"}), tmp_path, options)
    artifact = _build(demo, tmp_path, PrecisionPlan("int8", result.planned), target=target, onnx_path=result.qdq_path,
                      scales=tmp_path / "scales.json")
    executed = artifact.notes["executed"]
    assert executed[last] == "fp32" and [p for layer, p in executed.items() if layer != last] == ["int8"] * 4
    assert artifact.notes["int8"]["float_layers"] == {last: "fp32"} and not artifact.notes["int8"]["plan_not_honoured"]
    engine = TFLiteEngine(artifact.path, threads=2)
    assert engine.input_specs[0][2] == "float32" and engine._inputs[0][1]["dtype"] == np.int8
    agree, _ = _agreement(engine, demo)
    assert agree >= 0.99


def test_onnx_only_model_is_refused_in_one_line(demo, tmp_path):
    from edgekit.errors import BadInput
    from edgekit.models import load_model
    from edgekit.plan import PrecisionPlan

    with pytest.raises(BadInput, match="LiteRT builds from the PyTorch model .* is ONNX: pass the PyTorch model"):
        _build(demo, tmp_path, PrecisionPlan("fp32"), model=load_model(str(demo[1])))


def test_corrupt_tflite_fails_in_one_line(tmp_path, rpi5_int8):
    from edgekit.backends.base import Artifact, get_backend
    from edgekit.errors import BadInput
    from edgekit.targets import load_target

    (tmp_path / "random.tflite").write_bytes(bytes(range(256)) * 8)
    result = run_cli("profile", str(tmp_path / "random.tflite"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "not a TFLite flatbuffer" in result.stderr
    out, report, _ = rpi5_int8
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes((out / report["artifacts"]["engine"]).read_bytes()[:200])  # right header, broken body
    backend = get_backend("tflite")
    with pytest.raises(BadInput, match="LiteRT cannot load truncated.tflite"):
        backend.load(Artifact("tflite", truncated, (truncated,), "int8"), target=load_target("rpi5"), threads=1)
