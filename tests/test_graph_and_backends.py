import numpy as np
import onnx
import pytest

from edgekit import graph, roofline
from edgekit.backends.base import backend_for_file, get_backend
from edgekit.errors import BadInput
from edgekit.models import load_model
from edgekit.plan import PrecisionPlan
from edgekit.profile import ProfileSettings, profile_engine
from edgekit.targets import load_target


def test_export_matches_pytorch_within_tolerance(demo_model, demo_onnx):
    onnx.checker.check_model(onnx.load(str(demo_onnx)))
    feeds = [{"input": np.random.default_rng(i).random((1, 1, 8, 8), dtype=np.float32)} for i in range(4)]
    check = graph.check_export(demo_model, demo_onnx, feeds)
    assert check.samples == 4 and check.max_abs_diff < 1e-4


def test_layer_table_counts_macs_params_and_bytes(demo_onnx):
    layers = graph.layer_table(demo_onnx)
    convs = [layer for layer in layers if layer.op == "Conv"]
    # conv 1→16, 3x3, on 8x8: 16*8*8 outputs x 1*3*3 MACs; 16*9 weights + 16 biases (BN folded)
    assert convs[0].macs == 16 * 8 * 8 * 9 and convs[0].params == 16 * 9 + 16
    gemm = next(layer for layer in layers if layer.op == "Gemm")
    assert gemm.macs == 64 * 10 and gemm.params == 64 * 10 + 10
    assert all(layer.bytes_moved > 0 for layer in layers)


def test_roofline_prediction_is_labelled_predicted(demo_onnx):
    latency = roofline.predict_latency(graph.layer_table(demo_onnx), load_target("jetson"), "fp16")
    assert latency.kind == "predicted" and latency.p50 > 0 and "jetson-orin-nano" in latency.source


@pytest.mark.parametrize("backend_name", ["openvino", "onnxruntime"])
def test_backend_builds_runs_and_profiles_for_real(tmp_path, demo_model, demo_onnx, backend_name):
    host = load_target("host")
    backend = get_backend(backend_name)
    assert backend.available(host).run
    artifact = backend.build(onnx_path=demo_onnx, plan=PrecisionPlan(), target=host, out_dir=tmp_path)
    assert all(f.is_file() for f in artifact.files)
    feed = {"input": np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)}
    measured = profile_engine(lambda: backend.load(artifact, target=host, threads=1), feed,
                              ProfileSettings(repeats=20, min_time_s=0, warmup_s=0, layer_runs=5),
                              threads=1, source="test")
    assert measured.latency.kind == "measured" and measured.latency.samples >= 20
    assert measured.latency.min <= measured.latency.p50 <= measured.latency.p99 <= measured.latency.max
    assert {layer.op for layer in measured.layers} & {"Convolution", "Conv"}
    ours = backend.load(artifact, target=host, threads=1).run(feed)[0]
    np.testing.assert_allclose(ours, graph.reference_outputs(demo_model, feed)[0], rtol=1e-3, atol=1e-4)
    assert backend_for_file(artifact.path, "openvino").name == backend_name


def test_openvino_ir_runs_in_plain_openvino(tmp_path, demo_onnx):
    import openvino as ov

    artifact = get_backend("openvino").build(onnx_path=demo_onnx, plan=PrecisionPlan(), target=load_target("host"),
                                             out_dir=tmp_path)
    compiled = ov.Core().compile_model(str(artifact.path), "CPU")
    out = compiled({0: np.zeros((1, 1, 8, 8), np.float32)})[compiled.outputs[0]]
    assert out.shape == (1, 10)


def test_fp16_ir_for_a_target_that_lists_fp16(tmp_path, demo_onnx):
    import openvino as ov

    igpu = load_target("intel-igpu")
    availability = get_backend("openvino").available(igpu)
    assert availability.build  # the IR is built here even though the GPU is not
    artifact = get_backend("openvino").build(onnx_path=demo_onnx, plan=PrecisionPlan("fp16"), target=igpu, out_dir=tmp_path)
    weights = {op.get_element_type().to_string() for op in ov.Core().read_model(str(artifact.path)).get_ops()
               if op.get_type_name() == "Constant" and op.get_output_size() and len(op.get_output_shape(0)) == 4}
    assert "f16" in weights


def test_an_unknown_backend_is_refused_in_one_line():
    with pytest.raises(BadInput, match="unknown backend"):
        get_backend("nope")


def test_encoder_with_integer_inputs_exports_and_builds(tmp_path):
    model = load_model("examples.encoder:build")
    path = graph.export_onnx(model, tmp_path / "enc.onnx")
    feed = {"input_ids": np.arange(32, dtype=np.int64)[None] % 200 + 1,
            "attention_mask": (np.arange(32) < 20).astype(np.int64)[None]}
    graph.check_export(model, path, [feed])
    artifact = get_backend("openvino").build(onnx_path=path, plan=PrecisionPlan(), target=load_target("host"), out_dir=tmp_path)
    out = get_backend("openvino").load(artifact, target=load_target("host"), threads=1).run(feed)[0]
    np.testing.assert_allclose(out, graph.reference_outputs(model, feed)[0], rtol=1e-3, atol=1e-4)
