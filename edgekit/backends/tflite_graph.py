"""LiteRT's graph next to edgekit's ONNX graph: which .tflite tensor and op is which ONNX tensor and layer.

Why: litert-torch converts the PyTorch module itself, not edgekit's ONNX export, so names differ. The
two float graphs are matched by value instead: both run the same samples, and a LiteRT tensor is an
ONNX tensor when their values agree (NCHW → NHWC where the layouts differ). A LiteRT convolution or
fully-connected op is an ONNX layer when it reads the same activation, is the same kind of layer and
holds the same weights. Matched ops are renamed after their ONNX layer, so the built .tflite says by
itself which layer each op is (`executed()`, the precision plan's regexes, edgetpu_coverage.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.calibrate.observers import float_tensors
from edgekit.calibrate.qdq import activation_inputs, quantizable_layers, weight_input
from edgekit.errors import require

# LiteRT op → the ONNX layer types it can be (edgekit's quantizable layers)
COMPUTE = {"CONV_2D": ("Conv",), "DEPTHWISE_CONV_2D": ("Conv",), "FULLY_CONNECTED": ("Gemm", "MatMul"),
           "BATCH_MATMUL": ("MatMul",)}
PADDING = ("PAD", "PADV2")
MATCH_SAMPLES = 2


def _schema():
    return require("ai_edge_litert.schema_py_generated", "tflite")


def read(model: bytes):
    """The .tflite as a mutable flatbuffer object (ModelT)."""
    tools = require("ai_edge_litert.tools.flatbuffer_utils", "tflite")
    return tools.read_model_from_bytearray(bytearray(model))


def write(fb) -> bytes:
    tools = require("ai_edge_litert.tools.flatbuffer_utils", "tflite")
    return bytes(tools.convert_object_to_bytearray(fb))


def op_names() -> dict[int, str]:
    ops = _schema().BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_")}


def op_name(fb, op) -> str:
    code = fb.operatorCodes[op.opcodeIndex]
    return op_names().get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")


def type_names() -> dict[int, str]:
    types = _schema().TensorType
    return {v: k.lower() for k, v in vars(types).items() if not k.startswith("_")}


def constant(fb, index: int) -> np.ndarray | None:
    """A constant tensor's data (None for activations)."""
    if index < 0:
        return None
    tensor = fb.subgraphs[0].tensors[index]
    data = fb.buffers[tensor.buffer].data
    if data is None or len(data) == 0:
        return None
    dtype = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "int32": np.int32,
             "uint8": np.uint8, "int64": np.int64}.get(type_names()[tensor.type])
    if dtype is None:
        return None
    return np.frombuffer(bytes(np.asarray(data, np.uint8)), dtype).reshape(tensor.shape)


def set_constant(fb, index: int, array: np.ndarray) -> None:
    """Write float32 data into a constant tensor, in a buffer of its own."""
    tensor = fb.subgraphs[0].tensors[index]
    data = np.frombuffer(np.ascontiguousarray(array, np.float32).tobytes(), np.uint8).copy()
    shared = sum(t.buffer == tensor.buffer for s in fb.subgraphs for t in s.tensors) > 1
    if shared:
        buffer = _schema().BufferT()
        fb.buffers.append(buffer)
        tensor.buffer = len(fb.buffers) - 1
    fb.buffers[tensor.buffer].data = data


def rename_signature_inputs(fb, names: list[str]) -> None:
    """litert-torch names positional inputs args_0, args_1 …: give them the model's input names."""
    for signature in fb.signatureDefs or []:
        for entry in signature.inputs:
            key = entry.name.decode()
            if key.startswith("args_") and key[5:].isdigit() and int(key[5:]) < len(names):
                entry.name = names[int(key[5:])].encode()


def cast_feeds(model: bytes, feeds: list[dict]) -> list[dict]:
    """Feeds in the dtypes the .tflite's signature takes (litert-torch turns int64 inputs into int32)."""
    litert = require("ai_edge_litert.interpreter", "tflite")
    interpreter = litert.Interpreter(model_content=model)
    details = interpreter.get_signature_runner().get_input_details()
    return [{name: np.asarray(x).astype(details[name]["dtype"]) if name in details else x for name, x in feed.items()}
            for feed in feeds]


@dataclass
class Matching:
    tensors: dict[int, set[str]] = field(default_factory=dict)  # LiteRT tensor → ONNX tensors of equal value
    layers: dict[str, int] = field(default_factory=dict)  # ONNX layer → LiteRT op index
    unmatched: list[str] = field(default_factory=list)  # ONNX layers no LiteRT op could be matched to


def _onnx_values(onnx_path: Path, feeds: list[dict]) -> list[dict[str, np.ndarray]]:
    import onnx

    ort = require("onnxruntime", "onnxruntime")
    model = onnx.load(str(onnx_path))
    names = [n for n in float_tensors(model) if n not in {o.name for o in model.graph.output}]
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outs = [o.name for o in session.get_outputs()]
    return [{**feed, **dict(zip(outs, session.run(None, feed), strict=True))} for feed in feeds]


def _tflite_values(model: bytes, feeds: list[dict]) -> list[dict[int, np.ndarray]]:
    litert = require("ai_edge_litert.interpreter", "tflite")
    interpreter = litert.Interpreter(model_content=model, experimental_preserve_all_tensors=True,
                                     experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner = interpreter.get_signature_runner()
    graph = read(model).subgraphs[0]
    activations = {*graph.inputs, *(i for op in graph.operators for i in op.outputs)}  # not weights
    wanted = [d["index"] for d in interpreter.get_tensor_details() if d["dtype"] == np.float32 and d["index"] in activations]
    values = []
    for feed in feeds:
        runner(**feed)
        found = {}
        for index in wanted:
            try:
                found[index] = np.array(interpreter.get_tensor(index))
            except ValueError:  # a tensor the interpreter has not allocated (e.g. unused)
                continue
        values.append(found)
    return values


def _same(ours: np.ndarray, theirs: np.ndarray) -> bool:
    if ours.size != theirs.size or ours.size == 0:
        return False
    tol = 1e-4 + 1e-3 * float(np.abs(theirs).max())
    views = [theirs.reshape(ours.shape)]
    if theirs.ndim == ours.ndim == 4:
        views.append(theirs.transpose(0, 2, 3, 1))
    if theirs.ndim == ours.ndim == 3:
        views.append(theirs.transpose(0, 2, 1))
    return any(v.shape == ours.shape and float(np.abs(v - ours).max()) <= tol for v in views)


def onnx_weight_as_tflite(node, weight: np.ndarray, kind: str) -> np.ndarray | None:
    """An ONNX layer's weight in the layout of the LiteRT op it became."""
    import onnx

    trans_b = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
    if node.op_type == "Conv" and weight.ndim == 4:
        return weight.transpose(1, 2, 3, 0) if kind == "DEPTHWISE_CONV_2D" else weight.transpose(0, 2, 3, 1)
    if node.op_type == "Gemm" and weight.ndim == 2:
        return weight if trans_b else weight.T
    if node.op_type == "MatMul" and weight.ndim == 2:
        return weight.T
    return None


def _same_weight(node, inits: dict, kind: str, filt: np.ndarray | None) -> bool:
    info = weight_input(node, inits)
    w = onnx_weight_as_tflite(node, inits[info[0]], kind) if info else None
    return filt is not None and w is not None and w.shape == filt.shape and \
        np.allclose(w, filt, rtol=1e-3, atol=1e-5 * float(np.abs(w).max()))


def match(model: bytes, fb, onnx_path: Path, feeds: list[dict], tflite_feeds: list[dict]) -> Matching:
    """Match LiteRT's float model (bytes, and its flatbuffer `fb`) to the float ONNX model on `feeds`
    (`tflite_feeds`: the same in the .tflite's input dtypes)."""
    import onnx

    ours = _tflite_values(model, tflite_feeds[:MATCH_SAMPLES])
    theirs = _onnx_values(onnx_path, feeds[:MATCH_SAMPLES])
    result = Matching()
    by_size: dict[int, list[str]] = {}
    for name, value in theirs[0].items():
        if np.ptp(np.asarray(value, np.float64)) > 0:  # a constant tensor matches anything of its size
            by_size.setdefault(np.asarray(value).size, []).append(name)
    for index, value in ours[0].items():
        names = {n for n in by_size.get(value.size, [])
                 if all(_same(o[index], np.asarray(t[n], np.float32)) for o, t in zip(ours, theirs, strict=True)
                        if index in o)}
        if names:
            result.tensors[index] = names
    proto = onnx.load(str(onnx_path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    layers = quantizable_layers(proto)
    graph = fb.subgraphs[0]
    made_by = {out: op for op in graph.operators for out in op.outputs}
    for position, op in enumerate(graph.operators):
        kind = op_name(fb, op)
        if kind not in COMPUTE or not op.inputs:
            continue
        source = op.inputs[0]
        while source in made_by and op_name(fb, made_by[source]) in PADDING:
            source = made_by[source].inputs[0]  # LiteRT pads explicitly where ONNX's Conv pads itself
        reads = result.tensors.get(source, set())
        candidates = [name for name, node in layers.items()
                      if node.op_type in COMPUTE[kind] and name not in result.layers
                      and set(activation_inputs(node, inits)[:1]) & reads]
        if len(candidates) > 1:  # several layers read this activation: the one with these weights
            filt = constant(fb, op.inputs[1]) if len(op.inputs) > 1 else None
            candidates = [c for c in candidates if _same_weight(layers[c], inits, kind, filt)]
        if len(candidates) == 1:
            result.layers[candidates[0]] = position
    result.unmatched = [name for name in layers if name not in result.layers]
    return result


def rename_layers(fb, matching: Matching) -> None:
    """Name each matched op's output tensor after its ONNX layer."""
    graph = fb.subgraphs[0]
    taken = {t.name for t in graph.tensors}
    for layer, position in matching.layers.items():
        out = graph.operators[position].outputs[0]
        if layer.encode() not in taken:
            graph.tensors[out].name = layer.encode()
