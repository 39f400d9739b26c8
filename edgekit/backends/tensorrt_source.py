"""The engine's source for TensorRT: the Q/DQ ONNX checked against what TensorRT's ONNX parser takes
(its opset, its ops, symmetric int8 Q/DQ) and put in the form it builds from (int32 biases folded
to float), so a model TensorRT would refuse fails here, naming the node, not on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.backends import tensorrt_versions as versions
from edgekit.errors import BadInput, runtime_message

MIN_QDQ_OPSET = 13  # per-axis (per-channel) QuantizeLinear/DequantizeLinear came in opset 13


def constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    found = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            found[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return found


def _axis(node, rank: int) -> int:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    return axis + rank if axis < 0 else axis


def _output_axis(tensor: str, rank: int, consumers: dict) -> tuple[int | None, str]:
    """The output-channel axis of the weight `tensor` for the layer that reads it (through a DQ)."""
    for user in consumers.get(tensor, []):
        if user.op_type == "DequantizeLinear":
            return _output_axis(user.output[0], rank, consumers)
        if len(user.input) > 1 and user.input[1] == tensor:
            trans_b = next((a.i for a in user.attribute if a.name == "transB"), 0)
            axis = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0 if trans_b else 1, "MatMul": rank - 1}.get(user.op_type)
            if axis is not None:
                return axis, f"{user.op_type} '{user.name}'"
    return None, ""


def check_source(model, name: str, version: str = versions.DEFAULT_VERSION) -> dict:
    """Raise BadInput, naming the node, where TensorRT `version` would refuse the model: its opset, ops
    its parser lacks (ONNX-TensorRT's operator support matrix for that version), and Q/DQ that is not symmetric int8 (zero point 0, constant positive scales, per
    tensor on activations, per output channel on weights). Returns counts for the build notes."""
    graph = model.graph
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < (MIN_QDQ_OPSET if qdq else 9):
        raise BadInput(f"{name}: ONNX opset {opset}; TensorRT needs ≥ {MIN_QDQ_OPSET if qdq else 9}"
                       + (" for per-channel Q/DQ" if qdq else ""))
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise BadInput(f"{name}: node '{node.name}' is {node.domain}.{node.op_type}: TensorRT's ONNX parser "
                           "reads standard ONNX ops only (a custom op needs a TensorRT plugin)")
        if versions.unsupported(node.op_type, version):
            raise BadInput(f"{name}: {node.op_type} '{node.name}' is not an op the ONNX parser of TensorRT {version} "
                           "imports (ONNX-TensorRT operators.md)")
    consts = constants(graph)
    consumers: dict[str, list] = {}
    for n in graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    counts = {"opset": opset, "qdq_nodes": 0, "per_channel_weights": 0, "int32_dequantize": 0}
    for node in qdq:
        where = f"{name}: {node.op_type} '{node.name or node.output[0]}'"
        x, scale = consts.get(node.input[0]), consts.get(node.input[1])
        zero = node.input[2] if len(node.input) > 2 else ""
        if scale is None or (zero and zero not in consts):
            raise BadInput(f"{where}: its scale and zero point must be constants for TensorRT")
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise BadInput(f"{where}: its scale must be positive and finite")
        if x is not None and x.dtype == np.int32:
            counts["int32_dequantize"] += 1  # an int32 bias: folded into float (TensorRT dequantizes int8 only)
            continue
        if not zero:
            raise BadInput(f"{where}: no zero point, which ONNX reads as uint8; TensorRT runs int8: give an int8 zero point of 0")
        zp = consts[zero]
        if zp.dtype != np.int8:
            raise BadInput(f"{where}: {zp.dtype} zero point (asymmetric {zp.dtype}): TensorRT takes symmetric int8 "
                           "only; calibrate for a TensorRT target (quantization.activations: symmetric)")
        if np.any(zp != 0):
            raise BadInput(f"{where}: zero point {int(zp.flat[np.flatnonzero(zp)[0]])} (asymmetric): TensorRT takes "
                           "symmetric int8 only, zero point 0")
        if scale.size > 1:
            if x is None:
                raise BadInput(f"{where}: per-channel scales on an activation: TensorRT quantizes activations per tensor")
            axis = _axis(node, x.ndim)
            if not 0 <= axis < x.ndim or x.shape[axis] != scale.size:
                raise BadInput(f"{where}: {scale.size} scales for axis {axis} of a {list(x.shape)} weight")
            expected, layer = _output_axis(node.output[0], x.ndim, consumers)
            if expected is not None and axis != expected:
                raise BadInput(f"{where}: weight scales on axis {axis}: TensorRT wants them per output channel, "
                               f"axis {expected} for {layer}")
            counts["per_channel_weights"] += 1
        counts["qdq_nodes"] += 1
    return counts


def fold_int32_dequantize(model) -> int:
    """Replace each DequantizeLinear of a constant int32 tensor (a quantized bias) by the float tensor
    it computes, (q - zero point) · scale: the same values, in the form TensorRT accepts."""
    from onnx import numpy_helper

    graph = model.graph
    consts = constants(graph)
    folded = []
    for node in graph.node:
        x = consts.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if x is None or x.dtype != np.int32:
            continue
        scale = consts[node.input[1]].astype(np.float32)
        zp = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, np.int32)
        shape = [1] * x.ndim
        if scale.size > 1:
            shape[_axis(node, x.ndim)] = -1
        value = (x - zp.reshape(shape)).astype(np.float32) * scale.reshape(shape)
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    used = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return len(folded)


def write_source(onnx_path: Path, out: Path, version: str = versions.DEFAULT_VERSION, retype=None) -> dict:
    """Check `onnx_path` against TensorRT `version` and save it to `out` as TensorRT parses it, typed by
    `retype(model)` (the number of casts it adds: tensorrt_types); the counts and the model."""
    import onnx

    try:
        model = onnx.load(str(onnx_path))
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # onnx raises its own ValidationError/DecodeError
        raise BadInput(f"{onnx_path.name} is not a valid ONNX model: {runtime_message(err)}") from err
    counts = check_source(model, onnx_path.name, version)
    counts["int32_dequantize"] = fold_int32_dequantize(model)
    counts["casts"] = retype(model) if retype else 0
    counts["opset"] = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), counts["opset"])
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # the typed model must be one ONNX (and TensorRT) accepts
        raise BadInput(f"{out.name}: the typed model is not valid ONNX: {runtime_message(err)}") from err
    onnx.save(model, str(out))
    return {**counts, "model": model}
