"""The ONNX whose types say everything, for a strongly typed TensorRT network (10.1 on): int8 where Q/DQ
says so, and an explicit Cast around every run of layers the plan puts in fp16, with their weights
and Q/DQ scales stored in fp16.

Why: a strongly typed network takes each tensor's type from the ONNX and nothing else (no builder
precision flags, no per-layer precisions; TensorRT 11 removed both). NVIDIA's way to get such a model is
ModelOpt's AutoCast, which is not installable here (NVIDIA's own package index); this pass does the
same for edgekit's plans: a layer's float type is its plan's, a layer the plan does not name runs in
the target's float baseline (fp16 on a Jetson), and the model's inputs and outputs stay fp32.
"""

from __future__ import annotations

import numpy as np

FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT, FLOAT16
QDQ = ("QuantizeLinear", "DequantizeLinear")
KEEP_FP32_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}  # roi and scales: not data, ONNX wants them float32
AS_IS = ("Cast", "Shape", "Size")  # their output type does not follow their input's: left alone
FP16_QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear take fp16 scales from opset 19


def tensor_types(model) -> dict[str, int]:
    """The element type of every tensor of the model (ONNX shape inference)."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {i.name: i.data_type for i in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
    return types


def layer_types(model, planned: dict[str, str], rest: str) -> list[str]:
    """Each node's float type, in graph order: its plan's fp16/fp32; int8 layers and the unnamed ones (a
    QuantizeLinear among them: its input is cast to it, so a Q/DQ pair shares one scale) in `rest`; a
    DequantizeLinear in the type of the layer it feeds."""
    nodes = list(model.graph.node)
    chosen = [planned.get(n.name, rest) if planned.get(n.name, rest) in ("fp16", "fp32") else rest for n in nodes]
    first_user: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            if node.op_type not in QDQ:
                first_user.setdefault(name, index)
    for index, node in enumerate(nodes):
        if node.op_type == "DequantizeLinear" and node.output[0] in first_user:
            chosen[index] = chosen[first_user[node.output[0]]]
    return chosen


def _opset_for_fp16_scales(model) -> None:
    """Q/DQ with fp16 scales need opset 19: a model below it is converted (ONNX's version converter)."""
    from onnx import version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), FP16_QDQ_OPSET)
    if opset < FP16_QDQ_OPSET and any(n.op_type in QDQ for n in model.graph.node):
        model.CopyFrom(version_converter.convert_version(model, FP16_QDQ_OPSET))


def cast_float_layers(model, planned: dict[str, str], rest: str) -> int:
    """Rewrite `model` in place so its types say which layers run in fp16; the number of Casts added.
    All fp32 (the plan and `rest`): the model is left as it is."""
    from onnx import helper, numpy_helper

    if "fp16" not in layer_types(model, planned, rest):
        return 0
    _opset_for_fp16_scales(model)
    wanted = layer_types(model, planned, rest)
    graph = model.graph
    original = tensor_types(model)
    current = {name: t for name, t in original.items() if t in (FLOAT, FLOAT16)}
    inits = {i.name: i for i in graph.initializer}
    made: dict[tuple[str, int], str] = {}
    nodes, added = [], 0

    def typed(name: str, to: int) -> str:
        nonlocal added
        if current.get(name, to) == to or (name, to) in made:
            return made.get((name, to), name)
        new = f"{name}__{'fp16' if to == FLOAT16 else 'fp32'}"
        if name in inits:  # a constant: stored in the wanted type
            value = numpy_helper.to_array(inits[name]).astype(np.float16 if to == FLOAT16 else np.float32)
            graph.initializer.append(numpy_helper.from_array(value, new))
        else:
            nodes.append(helper.make_node("Cast", [name], [new], name=f"{new}_Cast", to=to))
            added += 1
        made[(name, to)] = new
        current[new] = to
        return new

    for original_node, precision in zip(list(graph.node), wanted, strict=True):
        node = type(original_node)()
        node.CopyFrom(original_node)  # the graph's own nodes are replaced at the end
        if node.op_type in AS_IS:
            nodes.append(node)
            continue
        to = FLOAT16 if precision == "fp16" else FLOAT
        keep = KEEP_FP32_INPUTS.get(node.op_type, ())
        floats = [i for i, name in enumerate(node.input) if name in current and i not in keep]
        for i in floats:
            node.input[i] = typed(node.input[i], to)
        if floats:
            for name in node.output:
                if original.get(name) in (FLOAT, FLOAT16):
                    current[name] = to
        nodes.append(node)
    added += _outputs_back_to_fp32(graph, nodes, current)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    del graph.value_info[:]  # stale types; the checker infers them again
    return added


def _outputs_back_to_fp32(graph, nodes: list, current: dict[str, int]) -> int:
    """The model's outputs stay fp32: an output made in fp16 is renamed and cast back under its name."""
    from onnx import helper

    added = 0
    for output in graph.output:
        if current.get(output.name) != FLOAT16:
            continue
        inner = f"{output.name}__fp16"
        for node in nodes:
            node.output[:] = [inner if o == output.name else o for o in node.output]
            node.input[:] = [inner if i == output.name else i for i in node.input]
        nodes.append(helper.make_node("Cast", [inner], [output.name], name=f"{output.name}_Cast", to=FLOAT))
        added += 1
    return added


def fp16_layers(model) -> list[str]:
    """The layers (Conv, Gemm, MatMul) of a typed model that compute in fp16: for the build notes."""
    types = tensor_types(model)
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
            and types.get(n.output[0]) == FLOAT16]
