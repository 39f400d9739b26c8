"""ONNX files from other exporters, as users bring them: torch.onnx's two exporters at old and new opsets,
weights in `Constant` nodes, initializers listed again as graph inputs, dynamic dimensions, ops no runtime
here knows, and the real PaddleOCR files (Paddle2ONNX). Each is normalised (`edgekit.normalize`) before
every later step; these tests load, measure and deploy them for real."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from edgekit.errors import BadInput
from edgekit.graph import layer_table
from edgekit.models import load_model
from tests.conftest import run_cli

SHAPE = (1, 3, 16, 16)
# conv 3→8 3x3 on 16x16, then conv 8→16 3x3 stride 2 → 8x8: MACs = Cout·Cin·k·k·Hout·Wout
CONV_MACS = [8 * 3 * 9 * 16 * 16, 16 * 8 * 9 * 8 * 8]
FAST = ("--json", "--duration", "0.2", "--repeats", "20")


class SmallCNN(torch.nn.Module):
    """conv-bn-relu ×2, pool, linear: the shape of most small vision models."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.body(x))


def small_cnn() -> SmallCNN:
    torch.manual_seed(0)
    model = SmallCNN()
    for bn in (model.body[1], model.body[4]):  # running statistics that are not the identity
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


# The dynamo exporter writes opset 18 and up only (asked for 11 it gives 18); TorchScript's does 11, 12, 13.
EXPORTS = {
    "torchscript-opset11": {"dynamo": False, "opset_version": 11},
    "torchscript-opset12-dynamic-batch": {"dynamo": False, "opset_version": 12,
                                          "dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}},
    "torchscript-opset13": {"dynamo": False, "opset_version": 13},
    "dynamo": {"dynamo": True},
    "dynamo-dynamic-batch": {"dynamo": True, "dynamic_shapes": {"x": {0: torch.export.Dim("batch")}}},
    # an old exporter's habit: every weight listed as a graph input too
    "torchscript-opset11-initializers-as-inputs": {"dynamo": False, "opset_version": 11,
                                                   "keep_initializers_as_inputs": True},
    # height and width dynamic as well: they need --input-shape
    "torchscript-dynamic-hw": {"dynamo": False, "opset_version": 13,
                               "dynamic_axes": {"x": {0: "batch", 2: "height", 3: "width"}, "y": {0: "batch"}}},
}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """`export(kind)` → the path of the small CNN exported that way (each kind exported once)."""
    folder = tmp_path_factory.mktemp("exports")
    done: dict[str, object] = {}

    def make(kind: str):
        if kind not in done:
            path = folder / f"{kind}.onnx"
            torch.onnx.export(small_cnn(), (torch.randn(*SHAPE),), str(path), input_names=["x"], output_names=["y"],
                              external_data=False, **EXPORTS[kind])
            done[kind] = path
        return done[kind]

    return make


def opset(proto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def torch_output(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return small_cnn()(torch.from_numpy(x)).numpy()


def random_npz(path, shape, n: int = 40, seed: int = 0):
    np.savez(path, x=np.random.default_rng(seed).standard_normal((n, *shape[1:])).astype(np.float32))
    return path


def one_line_error(result) -> str:
    """The CLI's answer to bad input: exit 2, one line on stderr, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error:"), result.stderr
    return lines[0]


# 1. torch.onnx's exporters -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [k for k in EXPORTS if k != "torchscript-dynamic-hw"])
def test_torch_exports_load_normalised(kind, export):
    path = export(kind)
    source = onnx.load(str(path))
    model = load_model(str(path))  # a dynamic batch dimension is taken as 1, no --input-shape needed

    assert [str(s) for s in model.inputs] == ["x: float32[1, 3, 16, 16]"]
    assert model.source_path == path and model.onnx_path != path
    normalised = onnx.load(str(model.onnx_path))
    assert opset(normalised) >= 13 and model.normalization["opset"] == [opset(source), opset(normalised)]
    if opset(source) < 13:
        assert f"opset {opset(source)} → 13 (onnx.version_converter)" in model.normalization["steps"]
    if "dynamic" in kind:
        assert "x[batch,3,16,16] fixed to [1,3,16,16]" in model.normalization["steps"]
    assert [i.name for i in normalised.graph.input] == ["x"]
    assert all(d.dim_value > 0 for d in normalised.graph.input[0].type.tensor_type.shape.dim)

    convs = [layer for layer in layer_table(model.onnx_path) if layer.op == "Conv"]
    assert [layer.macs for layer in convs] == CONV_MACS
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(run_onnx(model.onnx_path, x), run_onnx(path, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_onnx(model.onnx_path, x), torch_output(x), rtol=1e-4, atol=1e-5)
    assert model.normalization["check"]["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("kind", ["torchscript-opset12-dynamic-batch", "dynamo-dynamic-batch"])
def test_dynamic_batch_takes_the_batch_asked(kind, export):
    model = load_model(str(export(kind)), ["x:4,3,16,16"])
    assert model.inputs[0].shape == (4, 3, 16, 16)
    x = np.random.default_rng(2).standard_normal((4, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(model.onnx_path, x), torch_output(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["torchscript-opset12-dynamic-batch", "dynamo-dynamic-batch"])
def test_torch_export_deploys_int8_on_host(kind, export, tmp_path):
    data = random_npz(tmp_path / "data.npz", SHAPE)
    result = run_cli("deploy", "--target", "host", "--model", str(export(kind)), "--data", str(data),
                     "--precision", "int8", "--out", str(tmp_path / "run"), *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert json.loads((tmp_path / "run" / "report.json").read_text())["model"] == report["model"]
    assert report["status"].startswith("complete")

    assert report["model"]["normalized"]["opset"][1] >= 13
    assert report["model"]["normalized"]["inputs"] == {"x": [1, 3, 16, 16]}
    check = report["model"]["export_check"]
    assert check["samples"] > 0 and check["max_abs_diff"] <= 1e-4

    precision = report["precision"]
    assert precision["label"] == "int8" and set(precision["planned"].values()) == {"int8"}
    assert len(precision["planned"]) == 3  # two Convs and the Gemm
    # no labels in the data, a class vector out: agreement with the source model
    assert report["metric"]["name"] == "agreement"
    assert report["accuracy"]["metric"]["name"] == "agreement"
    assert report["accuracy"]["metric"]["value"] >= 0.9 and report["accuracy"]["cosine"] >= 0.99

    assert precision["mismatches"] == {}
    # ... which says something only where the runtime's layers were matched to the planned ones
    assert precision["executed"] == precision["planned"] and precision["unverified"] == [], precision


# 2. weights in Constant nodes (Paddle2ONNX's way) ---------------------------------------------------------

def weights_as_constant_nodes(source, out):
    proto = onnx.load(str(source))
    weights = {init.name for init in proto.graph.initializer}
    constants = [helper.make_node("Constant", [], [init.name], name=f"const:{init.name}", value=init)
                 for init in proto.graph.initializer]
    nodes = constants + list(proto.graph.node)
    inputs = [v for v in proto.graph.input if v.name not in weights]
    del proto.graph.node[:], proto.graph.initializer[:], proto.graph.input[:]
    proto.graph.node.extend(nodes)
    proto.graph.input.extend(inputs)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return out, len(constants)


def test_weights_in_constant_nodes_become_initializers(export, tmp_path):
    path, count = weights_as_constant_nodes(export("torchscript-opset11"), tmp_path / "constants.onnx")
    assert count >= 6 and not onnx.load(str(path)).graph.initializer

    model = load_model(str(path))
    normalised = onnx.load(str(model.onnx_path))
    assert [n for n in normalised.graph.node if n.op_type == "Constant"] == []
    conv_weights = {n.input[1] for n in normalised.graph.node if n.op_type == "Conv"}
    assert len(conv_weights) == 2 and conv_weights <= {i.name for i in normalised.graph.initializer}
    assert f"{count} Constant nodes folded into initializers" in model.normalization["steps"]
    assert [layer.macs for layer in layer_table(model.onnx_path) if layer.op == "Conv"] == CONV_MACS
    x = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(run_onnx(model.onnx_path, x), run_onnx(path, x), rtol=1e-5, atol=1e-6)

    data = random_npz(tmp_path / "data.npz", SHAPE)
    result = run_cli("calibrate", "--target", "host", "--model", str(path), "--data", str(data),
                     "--out", str(tmp_path / "run"), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["calibration"]["int8_layers"] == 3 and report["calibration"]["demoted"] == {}
    int8 = onnx.load(str(tmp_path / "run" / "model.int8.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in int8.graph.node) >= 3
    assert [n for n in int8.graph.node if n.op_type == "Constant"] == []


# 3. initializers listed as graph inputs (IR version 3 style) ----------------------------------------------

def as_ir3(source, out):
    """The small CNN as an exporter of ONNX 1.2's day wrote it: IR version 3, opset 8, and (required before
    IR 4) every initializer listed as a graph input. Its ops (Conv, Relu, GlobalAveragePool, Flatten, Gemm)
    mean the same at opset 8 as at 11."""
    proto = onnx.load(str(source))
    assert {n.op_type for n in proto.graph.node} == {"Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"}
    for init in proto.graph.initializer:
        proto.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    proto.ir_version = 3
    del proto.opset_import[:]
    proto.opset_import.append(helper.make_opsetid("", 8))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize("how", ["ir3-opset8", "keep_initializers_as_inputs"])
def test_initializers_listed_as_inputs_are_not_inputs(how, export, tmp_path):
    if how == "ir3-opset8":
        path = as_ir3(export("torchscript-opset11"), tmp_path / "ir3.onnx")
    else:
        path = export("torchscript-opset11-initializers-as-inputs")
    source = onnx.load(str(path))
    listed = len(source.graph.input) - 1
    assert listed >= 6 and {i.name for i in source.graph.initializer} <= {i.name for i in source.graph.input}

    model = load_model(str(path))
    assert [s.name for s in model.inputs] == ["x"]
    assert [i.name for i in onnx.load(str(model.onnx_path)).graph.input] == ["x"]
    assert f"{listed} initializers removed from the graph inputs" in model.normalization["steps"]
    assert load_model(str(path), ["1,3,16,16"]).inputs == model.inputs  # an unnamed shape goes to x
    assert model.normalization["opset"] == [opset(source), 13]
    x = np.random.default_rng(4).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(run_onnx(model.onnx_path, x), torch_output(x), rtol=1e-4, atol=1e-5)


# 4. dynamic dimensions other than the batch ---------------------------------------------------------------

def test_dynamic_height_and_width_need_input_shape(export, tmp_path):
    path = export("torchscript-dynamic-hw")
    with pytest.raises(BadInput) as caught:
        load_model(str(path))
    message = str(caught.value)
    assert "x[2] (height), x[3] (width)" in message and "--input-shape x:1,3," in message
    assert "x[0]" not in message and "\n" not in message  # the batch is taken as 1

    line = one_line_error(run_cli("deploy", "--target", "host", "--model", str(path), cwd=tmp_path))
    assert "dynamic dimensions x[2] (height), x[3] (width)" in line

    model = load_model(str(path), ["x:1,3,24,40"])
    assert model.inputs[0].shape == (1, 3, 24, 40)
    assert "x[batch,3,height,width] fixed to [1,3,24,40]" in model.normalization["steps"]
    convs = [layer for layer in layer_table(model.onnx_path) if layer.op == "Conv"]
    assert [layer.macs for layer in convs] == [8 * 3 * 9 * 24 * 40, 16 * 8 * 9 * 12 * 20]
    x = np.random.default_rng(5).standard_normal((1, 3, 24, 40)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(model.onnx_path, x), torch_output(x), rtol=1e-4, atol=1e-5)


WRONG_SHAPES = {
    "wrong rank": ("x:1,3,24", "--input-shape for 'x' has 3 dimensions; the model's input has 4"),
    "contradicts a fixed dim": ("x:1,4,24,40", "contradicts the model: x[1] is 3"),
    "unknown input name": ("image:1,3,24,40", "--input-shape names image; model"),
}


@pytest.mark.parametrize("case", list(WRONG_SHAPES))
def test_wrong_input_shape_is_one_line(case, export, tmp_path):
    shape, message = WRONG_SHAPES[case]
    path = export("torchscript-dynamic-hw")
    with pytest.raises(BadInput, match="--input-shape"):
        load_model(str(path), [shape])
    line = one_line_error(run_cli("deploy", "--target", "host", "--model", str(path), "--input-shape", shape,
                                  cwd=tmp_path))
    assert message in line, line


# 5. ops no runtime here knows ----------------------------------------------------------------------------

def model_with_op(op: str, domain: str, out):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node(op, ["r"], ["y"], name="custom", domain=domain)]
    imports = [helper.make_opsetid("", 13)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=imports), str(out))
    return out


@pytest.mark.parametrize(("op", "domain", "named"), [("MyOp", "com.example", "com.example"),
                                                     ("NotAnOnnxOp", "", "ai.onnx")])
def test_unknown_op_is_named_with_its_domain(op, domain, named, tmp_path):
    path = model_with_op(op, domain, tmp_path / f"{op}.onnx")
    line = one_line_error(run_cli("deploy", "--target", "host", "--model", str(path), cwd=tmp_path))
    assert f"'{op}'" in line and named in line and "no runtime here knows" in line, line


# 6. the real PaddleOCR files (Paddle2ONNX: Constant-node weights, '?' and p2o.DynamicDimension.N, opset 11/12)

@pytest.fixture(scope="module")
def ppocr():
    """`ppocr(name)` → the path of one of rapidocr-onnxruntime's model files."""
    models = importlib.resources.files("rapidocr_onnxruntime") / "models"

    def path(name: str):
        return models / name

    return path


CLS, DET = "ch_ppocr_mobile_v2.0_cls_infer.onnx", "ch_PP-OCRv4_det_infer.onnx"


def test_ppocr_classifier_without_input_shape_is_one_line(ppocr, tmp_path):
    line = one_line_error(run_cli("deploy", "--target", "host", "--model", str(ppocr(CLS)), cwd=tmp_path))
    assert "dynamic dimensions x[2] (?), x[3] (?)" in line and "--input-shape x:1,3,D2,D3" in line


@pytest.mark.parametrize(("name", "shape", "opsets"), [(CLS, "x:1,3,48,192", [11, 13]),
                                                       (DET, "x:1,3,96,160", [12, 13])])
def test_ppocr_loads_normalised(name, shape, opsets, ppocr):
    source = onnx.load(str(ppocr(name)))
    constants = sum(n.op_type == "Constant" for n in source.graph.node)
    assert constants > 100 and opset(source) == opsets[0]

    model = load_model(str(ppocr(name)), [shape])
    dims = [int(d) for d in shape.split(":")[1].split(",")]
    assert model.inputs[0].shape == tuple(dims)
    steps = model.normalization["steps"]
    assert f"{constants} Constant nodes folded into initializers" in steps
    assert f"opset {opsets[0]} → 13 (onnx.version_converter)" in steps
    assert model.normalization["opset"] == opsets
    assert model.normalization["nodes"][1] < model.normalization["nodes"][0]
    assert model.normalization["check"]["max_abs_diff"] <= 1e-4
    normalised = onnx.load(str(model.onnx_path))
    assert not [n for n in normalised.graph.node if n.op_type == "Constant"]
    assert [i.name for i in normalised.graph.input] == ["x"]
    convs = [layer for layer in layer_table(model.onnx_path) if layer.op == "Conv"]
    assert len(convs) > 20 and all(layer.macs > 0 for layer in convs)


def test_ppocr_classifier_deploys_int8_on_host(ppocr, tmp_path):
    real = importlib.util.find_spec("edgekit.ocr_zoo") is not None
    if real:  # rendered text lines, upright or turned, with their labels (40 of them: the test stays fast)
        from edgekit.ocr_zoo import classifier_data

        inputs, labels = classifier_data(40)
        np.savez(tmp_path / "cls.npz", x=inputs["x"], labels=labels)
        data = tmp_path / "cls.npz"
    else:
        data = random_npz(tmp_path / "cls.npz", (1, 3, 48, 192))
    # minmax: the calibration method search (`auto`) triples the time on 54 layers and is tested elsewhere
    result = run_cli("deploy", "--target", "host", "--model", str(ppocr(CLS)), "--input-shape", "x:1,3,48,192",
                     "--data", str(data), "--precision", "int8", "--method", "minmax", "--out", str(tmp_path / "run"),
                     *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"].startswith("complete")
    assert report["model"]["normalized"]["opset"] == [11, 13]
    assert report["model"]["export_check"]["max_abs_diff"] <= 1e-4
    precision = report["precision"]
    assert precision["label"] == "int8" and precision["mismatches"] == {}
    assert precision["executed"] == precision["planned"] and len(precision["planned"]) > 50
    assert report["accuracy"]["metric"]["name"] == report["metric"]["name"]
    assert report["accuracy"]["cosine"] >= 0.99
    if real:  # labels and a class vector: top-1 accuracy, which int8 keeps
        assert report["metric"]["name"] == "top1"
        assert report["accuracy"]["metric"]["source"] >= 0.9 and report["accuracy"]["metric"]["drop"] <= 0.05


def test_ppocr_detector_deploys_int8_on_host_with_every_layer_verified(ppocr, tmp_path):
    """OpenVINO renames the detector's depthwise convolutions when it folds their scales (Multiply_N):
    they are still verified, by their shapes, not left unverified."""
    data = random_npz(tmp_path / "det.npz", (1, 3, 96, 160), n=8)
    result = run_cli("deploy", "--target", "host", "--model", str(ppocr(DET)), "--input-shape", "x:1,3,96,160",
                     "--data", str(data), "--out", str(tmp_path / "run"), "--precision", "int8", "--method", "minmax",
                     *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    precision = report["precision"]
    assert precision["label"] == "int8" and len(precision["planned"]) == 62
    assert precision["unverified"] == [] and precision["mismatches"] == {}
    assert precision["executed"] == precision["planned"]


def test_ppocr_detector_deploys_fp32_on_host(ppocr, tmp_path):
    data = random_npz(tmp_path / "det.npz", (1, 3, 96, 160), n=8)
    result = run_cli("deploy", "--target", "host", "--model", str(ppocr(DET)), "--input-shape", "x:1,3,96,160",
                     "--data", str(data), "--out", str(tmp_path / "run"), *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"].startswith("complete") and report["precision"]["label"] == "fp32"
    assert report["model"]["normalized"]["opset"] == [12, 13]
    assert report["model"]["export_check"]["max_abs_diff"] <= 1e-4
    assert report["precision"]["mismatches"] == {}
    # a probability map [1, 1, 96, 160] out, no labels: the metric for maps
    assert report["metric"]["name"] == "rel-mse" and report["accuracy"]["metric"]["value"] >= 0.99
