"""edgekit's int8 calibration carried into LiteRT (full-integer .tflite, ai-edge-quantizer).

Why this way: the int8 model must be edgekit's, not a second calibration. ai-edge-quantizer quantizes
the float .tflite litert-torch converted; before it does, every layer matched to edgekit's ONNX graph
(see tflite_graph) takes the weights and biases of edgekit's calibrated model (cross-layer equalized,
bias corrected, already on edgekit's per-channel int8 grid, which the quantizer's max|w|/127 rule
reproduces), and every matched activation takes edgekit's range from scales.json. What cannot be
matched keeps the quantizer's min/max on the same calibration split, and the notes say which.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.backends import tflite_graph as tg
from edgekit.calibrate.qdq import quantizable_layers
from edgekit.errors import Failure, require, runtime_message
from edgekit.plan import PrecisionPlan

TRANSPLANT_MIN_COSINE = 0.99  # edgekit's weights in LiteRT's graph must still compute the same function


@dataclass
class Int8Report:
    weights: str = ""
    ranges: dict = field(default_factory=dict)
    float_layers: dict[str, str] = field(default_factory=dict)  # layer → precision kept
    plan_not_honoured: dict[str, str] = field(default_factory=dict)  # layer → why
    calibration: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"weights": self.weights, "activation_ranges": self.ranges, "float_layers": self.float_layers,
                "plan_not_honoured": self.plan_not_honoured, "calibration": self.calibration}


def _attr(node, name: str, default):
    import onnx

    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _constants(proto) -> dict[str, np.ndarray]:
    """Every tensor of an ONNX model computable from initializers through DequantizeLinear: the Q/DQ
    model's weights and biases as the float values its int8 grid stands for."""
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and all(t in values for t in node.input if t):
            x, scale = values[node.input[0]], values[node.input[1]].astype(np.float32)
            zero = values[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros_like(scale)
            shape = [1] * x.ndim
            if scale.ndim:
                shape[int(_attr(node, "axis", 1))] = -1
            values[node.output[0]] = (x.astype(np.float32) - zero.astype(np.float32).reshape(shape or ())) * scale.reshape(shape or ())
    return values


def _bias(node, values: dict, consumers: dict) -> np.ndarray | None:
    """A layer's bias in edgekit's model: Conv/Gemm's own input, or the constant of a MatMul's single Add
    (LiteRT fuses it into FULLY_CONNECTED)."""
    if node.op_type in ("Conv", "Gemm"):
        return values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    users = consumers.get(node.output[0], [])
    if len(users) == 1 and users[0].op_type == "Add":
        other = [values.get(t) for t in users[0].input if t != node.output[0]]
        if other and other[0] is not None and other[0].ndim == 1:
            return other[0]
    return None


def transplant(fb, matching: tg.Matching, source: Path) -> str:
    """Put the weights and biases of edgekit's calibrated model (`source`: the Q/DQ ONNX) into LiteRT's
    float graph, layer by layer; all or none, since equalized pairs only compute the same function
    together. Returns why not, or ''."""
    import onnx

    if matching.unmatched:
        return f"{len(matching.unmatched)} layer(s) not matched to a LiteRT op ({', '.join(matching.unmatched[:3])})"
    proto = onnx.load(str(source))
    values = _constants(proto)
    layers = quantizable_layers(proto)
    graph = fb.subgraphs[0]
    consumers: dict[str, list] = {}
    for n in proto.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    writes = []
    for name, position in matching.layers.items():
        node, op = layers.get(name), graph.operators[position]
        if node is None:
            return f"layer {name} is not in {source.name}"
        kind = tg.op_name(fb, op)
        weight = values.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None and node.op_type == "MatMul":
            continue  # a product of two activations: no weights to carry
        target = tg.constant(fb, op.inputs[1]) if len(op.inputs) > 1 else None
        w = tg.onnx_weight_as_tflite(node, weight, kind) if weight is not None else None
        if w is None or target is None or w.shape != target.shape:
            return f"layer {name}: its weight does not fit LiteRT's {kind} filter"
        writes.append((op.inputs[1], w))
        bias = _bias(node, values, consumers)
        if bias is None:
            continue  # no bias in edgekit's model: LiteRT's (zero) stays
        current = tg.constant(fb, op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        if current is None or current.shape != bias.shape:
            return f"layer {name}: LiteRT's {kind} has no bias to hold edgekit's"
        writes.append((op.inputs[2], bias))
    for index, array in writes:
        tg.set_constant(fb, index, array)
    return ""


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def outputs(model: bytes, feeds: list[dict]) -> list[np.ndarray]:
    litert = require("ai_edge_litert.interpreter", "tflite")
    runner = litert.Interpreter(model_content=model).get_signature_runner()
    return [np.concatenate([np.ravel(v) for _, v in sorted(runner(**feed).items())]) for feed in feeds]


def _edgekit_ranges(scales_path: Path | None) -> dict[str, tuple[float, float, float]]:
    """ONNX tensor → (min, max, scale) of the grid edgekit quantized it on."""
    if scales_path is None or not Path(scales_path).is_file():
        return {}
    tensors = json.loads(Path(scales_path).read_text()).get("tensors", {})
    grid = {"uint8": (0, 255), "int8": (-128, 127)}
    out = {}
    for name, t in tensors.items():
        if t.get("quantized") and t.get("dtype") in grid:
            lo, hi = grid[t["dtype"]]
            out[name] = ((lo - t["zero_point"]) * t["scale"], (hi - t["zero_point"]) * t["scale"], t["scale"])
    return out


def _recipe(quantizer, plan: PrecisionPlan, matching: tg.Matching, report: Int8Report):
    aeq = require("ai_edge_quantizer.quantizer", "tflite")
    names = aeq.qtyping.TFLOperationName
    quantizer.add_static_config(".*", names.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
    for layer, precision in plan.layers.items():
        if precision == "int8":
            continue
        if layer not in matching.layers:
            report.plan_not_honoured[layer] = f"planned {precision}, but no LiteRT op could be matched to it: int8"
            continue
        scope = f"^{re.escape(layer)};$"
        if precision == "fp16":
            quantizer.add_weight_only_config(scope, names.ALL_SUPPORTED, 16, algorithm_key=aeq.AlgorithmName.FLOAT_CASTING)
        else:
            quantizer.update_quantization_recipe(scope, names.ALL_SUPPORTED, None, algorithm_key=aeq.AlgorithmName.NO_QUANTIZE)
        report.float_layers[layer] = precision


def quantize(float_model: bytes, fb, matching: tg.Matching, *, plan: PrecisionPlan, source: Path | None,
             scales: Path | None, calibration: list[dict], source_name: str) -> tuple[bytes, Int8Report]:
    """The full-integer .tflite of `float_model` (flatbuffer `fb`, matched by `matching`)."""
    aeq = require("ai_edge_quantizer.quantizer", "tflite")
    report = Int8Report(calibration={"samples": len(calibration), "source": source_name,
                                     "ranges_without_edgekit": "ai-edge-quantizer's min/max over these samples"})
    why_not = transplant(fb, matching, source) if source is not None else "no calibrated model"
    model = tg.write(fb)
    if not why_not:
        before, after = outputs(float_model, calibration[:8]), outputs(model, calibration[:8])
        cosine = min(_cosine(a, b) for a, b in zip(before, after, strict=True))
        if cosine < TRANSPLANT_MIN_COSINE:
            why_not = f"LiteRT's graph with edgekit's weights drifts from the source model (cosine {cosine:.4f})"
    if why_not:
        model = float_model
        report.weights = f"LiteRT's own (ai-edge-quantizer per-channel int8); edgekit's not used: {why_not}"
    else:
        report.weights = (f"edgekit's calibrated weights and biases for all {len(matching.layers)} layers "
                          "(equalized and bias corrected where edgekit did; per-channel int8 on edgekit's grid)")
    quantizer = aeq.Quantizer(bytearray(model))
    _recipe(quantizer, plan, matching, report)
    try:
        qsvs = quantizer.calibrate({"serving_default": calibration}, num_threads=2)
    except Exception as err:
        raise Failure(f"ai-edge-quantizer could not calibrate the LiteRT model: {runtime_message(err)}") from err
    equalized = bool(scales and json.loads(Path(scales).read_text()).get("equalization", {}).get("used"))
    # edgekit's ranges are those of the model its scales were observed on: LiteRT's graph computes that
    # model's tensors when edgekit's weights are in it, or when edgekit did not equalize.
    ranges = _edgekit_ranges(scales) if not why_not or not equalized else {}
    names = {i: t.name.decode() for i, t in enumerate(tg.read(model).subgraphs[0].tensors)}
    used: dict[str, str] = {}
    for index, onnx_names in matching.tensors.items():
        ours = [n for n in sorted(onnx_names) if n in ranges]
        name = names.get(index)
        if ours and name in qsvs and "min" in qsvs[name]:
            lo, hi, _ = ranges[ours[0]]
            qsvs[name] = {**qsvs[name], "min": np.full_like(qsvs[name]["min"], lo), "max": np.full_like(qsvs[name]["max"], hi)}
            used[name] = ours[0]
    try:
        quantized = bytes(quantizer.quantize(qsvs, enable_progress_report=False).quantized_model)
    except Exception as err:
        raise Failure(f"ai-edge-quantizer could not quantize the LiteRT model: {runtime_message(err)}") from err
    report.ranges = _range_report(quantized, used, ranges, len([n for n, v in qsvs.items() if "min" in v]), why_not)
    return quantized, report


def _range_report(quantized: bytes, used: dict[str, str], ranges: dict, total: int, why_not: str) -> dict:
    """How many activation scales in the built model are edgekit's, checked in the built model itself."""
    fb = tg.read(quantized)
    kept, changed = [], []
    for tensor in fb.subgraphs[0].tensors:
        name = tensor.name.decode()
        if name in used and tensor.quantization is not None and tensor.quantization.scale is not None and len(tensor.quantization.scale):
            want = ranges[used[name]][2]
            (kept if abs(float(tensor.quantization.scale[0]) - want) <= 1e-6 * max(want, 1e-12) + 1e-9 else changed).append(name)
    note = "ranges edgekit calibrated (scales.json), matched by value to LiteRT's tensors"
    if not ranges:
        note = f"none from edgekit: its ranges belong to its cross-layer equalized model, and {why_not}"
    return {"edgekit": len(kept), "quantizer": total - len(kept), "note": note,
            "changed_by_quantizer": changed, "edgekit_tensors": {n: used[n] for n in kept}}


def float_io(model: bytes) -> bytes:
    """Float inputs and outputs around the int8 graph (QUANTIZE in, DEQUANTIZE out), as TFLite's
    converter writes full-integer models unless int8 I/O is asked for."""
    schema = require("ai_edge_litert.schema_py_generated", "tflite")
    fb = tg.read(model)
    graph = fb.subgraphs[0]

    def opcode(code: int) -> int:
        for i, c in enumerate(fb.operatorCodes):
            if max(c.builtinCode, c.deprecatedBuiltinCode) == code:
                return i
        entry = schema.OperatorCodeT()
        entry.builtinCode, entry.deprecatedBuiltinCode, entry.version = code, min(code, 127), 2 if code == 6 else 1
        fb.operatorCodes.append(entry)
        return len(fb.operatorCodes) - 1

    def float_twin(index: int) -> int:
        """The int8 tensor keeps its name (a layer's, or the one the build report gives)."""
        old = graph.tensors[index]
        twin = schema.TensorT()
        twin.name, twin.shape, twin.shapeSignature = old.name + b"_float", list(old.shape), old.shapeSignature
        twin.type, twin.buffer = schema.TensorType.FLOAT32, 0
        graph.tensors.append(twin)
        return len(graph.tensors) - 1

    def remap(entries, old: int, new: int) -> None:
        for signature in fb.signatureDefs or []:
            for entry in getattr(signature, entries):
                if entry.tensorIndex == old:
                    entry.tensorIndex = new

    added: dict[str, list] = {"inputs": [], "outputs": []}
    for entries, builtin in (("inputs", schema.BuiltinOperator.QUANTIZE), ("outputs", schema.BuiltinOperator.DEQUANTIZE)):
        ends = getattr(graph, entries)
        for pos, index in enumerate(list(ends)):
            if graph.tensors[index].type != schema.TensorType.INT8:
                continue
            twin = float_twin(index)
            op = schema.OperatorT()
            op.opcodeIndex = opcode(builtin)
            op.inputs, op.outputs = ([twin], [index]) if entries == "inputs" else ([index], [twin])
            added[entries].append(op)
            ends[pos] = twin
            remap(entries, index, twin)
    graph.operators = added["inputs"] + list(graph.operators) + added["outputs"]
    return tg.write(fb)
