"""The Q/DQ ONNX writer: QuantizeLinear/DequantizeLinear pairs around exactly the layers the plan
makes int8, weights stored as int8 with per-channel scales, biases as int32 (the standard QDQ form
that ONNX Runtime runs as is, OpenVINO turns into int8 kernels, and TensorRT builds explicitly).

Bias correction (on by default) removes the mean output shift that rounding the weights causes:
b' = b - (W_q - W) · E[x], with E[x] the per-channel mean of the layer's input on the calibration set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.calibrate.scales import QParams, quantize_weight, weight_qmax, weight_scales
from edgekit.errors import BadInput

QUANTIZABLE = ("Conv", "Gemm", "MatMul")
FUSED_ACTIVATIONS = ("Relu", "Clip")  # what a runtime fuses into the layer before it
JOINS = ("Add",)  # residual joins: int8 when every branch is, so the runtime keeps the chain in int8
POOLS = ("GlobalAveragePool", "ReduceMean", "MaxPool", "AveragePool")  # int8 in, int8 out


@dataclass
class QdqSummary:
    layers: list[str] = field(default_factory=list)  # the layers written as int8
    links: list[str] = field(default_factory=list)  # joins and pools written with int8 inputs
    activations: dict[str, dict] = field(default_factory=dict)  # tensor → QParams as dict
    weights: dict[str, dict] = field(default_factory=dict)  # layer → {tensor, axis, scale range}
    bias_corrected: dict[str, float] = field(default_factory=dict)  # layer → max |bias shift|


def _attr(node, name: str, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def quantizable_layers(model) -> dict[str, object]:
    """The layers int8 applies to (convolutions, fully connected, matrix products), by node name."""
    return {n.name: n for n in model.graph.node if n.op_type in QUANTIZABLE}


def activation_inputs(node, initializers: dict) -> list[str]:
    """The inputs of a layer that are activations (quantized per tensor), not weights or biases."""
    if node.op_type == "Conv":
        return [node.input[0]]
    if node.op_type == "Gemm":
        return [t for t in node.input[:2] if t not in initializers]
    return [t for t in node.input[:2] if t not in initializers]


def weight_input(node, initializers: dict) -> tuple[str, int | None] | None:
    """The weight tensor of a layer and its output-channel axis (None: per tensor)."""
    if node.op_type == "Conv":
        return node.input[1], 0
    if node.op_type == "Gemm" and node.input[1] in initializers:
        return node.input[1], 0 if _attr(node, "transB", 0) else 1
    if node.op_type == "MatMul" and node.input[1] in initializers:
        return node.input[1], 1 if initializers[node.input[1]].ndim == 2 else None
    return None


def int8_links(model, int8_layers: list[str], initializers: dict, exclude: set[str] = frozenset()) -> dict[str, list[str]]:
    """The ops between int8 layers that should read int8 too: residual joins (an Add of two activations)
    whose every input comes out of an int8 layer (through its fused activation) or goes into one, and
    pools fed by an int8 layer. Quantizing their inputs lets OpenVINO and TensorRT fuse the join into the
    convolution and keep tensors int8 between layers, as NNCF and ONNX Runtime's quantizer do.
    Returns {node: its inputs to quantize}; a tensor in `exclude` (sentinels) disqualifies its node."""
    int8 = set(int8_layers)  # grows with the links found, in graph order: a pool after an int8 join is int8 too
    producer = {t: n for n in model.graph.node for t in n.output}
    nodes = {n.name: n for n in model.graph.node}
    int8_inputs = {t for name in int8 for t in activation_inputs(nodes[name], initializers)}

    def from_int8(tensor: str) -> bool:
        node = producer.get(tensor)
        while node is not None and node.op_type in FUSED_ACTIVATIONS:
            node = producer.get(node.input[0])
        return node is not None and node.name in int8

    links = {}
    for node in model.graph.node:
        inputs = [t for t in node.input if t]
        if node.op_type in JOINS and len(inputs) == 2 and not any(t in initializers or t not in producer for t in inputs):
            if all((from_int8(t) or t in int8_inputs) and t not in exclude for t in inputs):
                links[node.name] = inputs
        elif node.op_type in POOLS and inputs and from_int8(inputs[0]) and inputs[0] not in exclude:
            links[node.name] = inputs[:1]
        if node.name in links:
            int8.add(node.name)
    return links


def _bias_shift(node, weight: np.ndarray, dequantized: np.ndarray, mean: np.ndarray | None) -> np.ndarray | None:
    """(W_q - W) · E[x] per output channel, or None when the input mean is unknown."""
    if mean is None:
        return None
    error = dequantized.astype(np.float64) - weight
    if node.op_type == "Conv":
        groups = int(_attr(node, "group", 1))
        cout, cin_g = error.shape[:2]
        if mean.size != cin_g * groups:
            return None
        per_in = error.reshape(cout, cin_g, -1).sum(axis=2)
        group_of = np.arange(cout) // (cout // groups)
        return (per_in * mean.reshape(groups, cin_g)[group_of]).sum(axis=1)
    if node.op_type == "Gemm":
        error = error if _attr(node, "transB", 0) else error.T  # [N, K]
        return error @ mean if mean.size == error.shape[1] else None
    return mean @ error if error.ndim == 2 and mean.size == error.shape[0] else None  # MatMul [K, N]


def _bias_of(node, initializers: dict, consumers: dict) -> tuple[str | None, str]:
    """The bias tensor a layer's output shift can go into: Conv/Gemm's own, or MatMul's single Add."""
    if node.op_type in ("Conv", "Gemm"):
        return (node.input[2] if len(node.input) > 2 and node.input[2] else None), "own"
    users = consumers.get(node.output[0], [])
    if len(users) == 1 and users[0].op_type == "Add":
        other = [t for t in users[0].input if t != node.output[0]]
        if other and other[0] in initializers and initializers[other[0]].ndim == 1:
            return other[0], "add"
    return None, "none"


def write_qdq(model, int8_layers: list[str], activations: dict[str, QParams], out_path: Path, *,
              channel_means: dict[str, np.ndarray] | None = None, bias_correction: bool = True,
              links: dict[str, list[str]] | None = None, weight_bits: int = 8) -> QdqSummary:
    """Write `model` (an fp32 onnx.ModelProto, left unchanged) with `int8_layers` quantized, and the
    inputs of `links` (see int8_links). Each quantized tensor gets one Q/DQ pair, right after the
    node that makes it, shared by all the consumers that read it in int8."""
    import onnx

    model_out = onnx.ModelProto()
    model_out.CopyFrom(model)
    layers = quantizable_layers(model_out)
    unknown = [name for name in int8_layers if name not in layers]
    if unknown:
        raise BadInput(f"cannot quantize {', '.join(unknown)}: not a {'/'.join(QUANTIZABLE)} layer of the model")
    edits = _QdqEdits(model_out.graph, activations, weight_qmax(weight_bits))
    for name in int8_layers:
        edits.quantize_layer(name, layers[name], channel_means or {}, bias_correction)
    for name, tensors in (links or {}).items():
        edits.quantize_link(name, tensors)
    edits.apply()
    # int32 bias and int8 weights need no new opset; per-axis DequantizeLinear needs opset ≥ 13.
    opset = next((o for o in model_out.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset.version < 13:
        raise BadInput(f"Q/DQ needs ONNX opset ≥ 13; the model has opset {opset.version}")
    onnx.checker.check_model(model_out)
    onnx.save(model_out, str(out_path))
    return edits.summary


class _QdqEdits:
    """write_qdq's changes to one copy of the graph, gathered while its layers are walked and put in
    place by `apply` in one pass: activation Q/DQ pairs after the node that makes the tensor, weight
    and bias DequantizeLinear before the layer, new and bias-corrected initializers."""

    def __init__(self, graph, activations: dict[str, QParams], qmax: int):
        from onnx import numpy_helper

        self.graph, self.activations, self.qmax = graph, activations, qmax
        self.initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.summary = QdqSummary()
        self.new_inits: list = []
        self.replaced_inits: dict[str, np.ndarray] = {}
        self.stored_weights: dict[tuple, tuple[str, str, str]] = {}  # (float weight, axis) → int8 value, scale, zero point
        self.before: dict[int, list] = {}  # node index → weight/bias DQ nodes to emit before it
        self.after: dict[int, list] = {}  # node index (-1: the graph inputs) → activation Q/DQ nodes to emit after it
        self.dq_of: dict[str, str] = {}  # activation tensor → its dequantized name
        # The graph as it is before any edit: who reads each tensor, where each node and tensor is made.
        # Positions are keyed by id(node): `consumers` (and the caller's layers) keep those node objects alive.
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for t in node.input:
                self.consumers.setdefault(t, []).append(node)
        self.position = {id(n): i for i, n in enumerate(graph.node)}
        self.made_at = {t: i for i, n in enumerate(graph.node) for t in n.output}

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.new_inits.append(numpy_helper.from_array(array, name))
        return name

    def activation(self, tensor: str) -> str:
        """The dequantized name of `tensor`, its Q/DQ pair made on first use."""
        from onnx import helper

        if tensor in self.dq_of:
            return self.dq_of[tensor]
        p = self.activations[tensor]
        zp_type = np.uint8 if p.dtype == "uint8" else np.int8
        scale = self.const(f"{tensor}_scale", np.array(p.scale, np.float32))
        zp = self.const(f"{tensor}_zero_point", np.array(p.zero_point, zp_type))
        q, dq = f"{tensor}_quantized", f"{tensor}_dequantized"
        self.after.setdefault(self.made_at.get(tensor, -1), []).extend([
            helper.make_node("QuantizeLinear", [tensor, scale, zp], [q], name=f"{tensor}_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [q, scale, zp], [dq], name=f"{tensor}_DequantizeLinear")])
        self.dq_of[tensor] = dq
        self.summary.activations[tensor] = p.as_dict()
        return dq

    def quantize_layer(self, name: str, node, means: dict[str, np.ndarray], bias_correction: bool) -> None:
        """The layer reads its activations, weight and bias through Q/DQ (the bias corrected first)."""
        at = self.position[id(node)]
        act_inputs = activation_inputs(node, self.initializers)
        missing = [t for t in act_inputs if t not in self.activations]
        if missing:
            raise BadInput(f"layer {name}: no calibrated scale for its input {missing[0]}")
        new_inputs = list(node.input)
        for t in act_inputs:
            new_inputs[list(node.input).index(t)] = self.activation(t)
        weight_info = weight_input(node, self.initializers)
        if weight_info:
            w_name, axis = weight_info
            w = self.initializers[w_name]
            scales, dequantized = self._weight(name, at, w_name, w, axis, new_inputs)
            if bias_correction and act_inputs:
                self._correct_bias(name, node, w, dequantized, means.get(act_inputs[0]), new_inputs)
            if node.op_type in ("Conv", "Gemm") and len(new_inputs) > 2 and new_inputs[2]:
                self._int32_bias(name, at, scales, self.activations[act_inputs[0]].scale, new_inputs)
        del node.input[:]
        node.input.extend(new_inputs)
        self.summary.layers.append(name)

    def _weight(self, name: str, at: int, w_name: str, w: np.ndarray, axis: int | None, new_inputs: list[str]):
        """The weight stored as int8 (per channel along `axis`, else per tensor) behind a DequantizeLinear;
        its scales and the float values it now stands for."""
        from onnx import helper

        qmax = self.qmax
        scales = weight_scales(w, axis, qmax) if axis is not None else weight_scales(w.reshape(1, -1), 0, qmax)[:1].reshape(())
        q = quantize_weight(w, scales, axis, qmax) if axis is not None else np.clip(np.round(w / scales), -qmax, qmax).astype(np.int8)
        shape = [1] * w.ndim
        if axis is not None:
            shape[axis] = -1
        dequantized = q.astype(np.float32) * scales.reshape(shape)
        key = (w_name, axis)
        if key not in self.stored_weights:  # a weight two layers share (tied) is stored once per axis
            stored = w_name + ("" if all(k[0] != w_name for k in self.stored_weights) else f"_axis{axis}")
            self.stored_weights[key] = (self.const(f"{stored}_quantized", q), self.const(f"{stored}_scale", scales),
                                        self.const(f"{stored}_zero_point", np.zeros_like(scales, np.int8)))
        wq, ws, wz = self.stored_weights[key]
        w_dq = f"{w_name}_dequantized_{name}"
        attrs = {"axis": axis} if axis is not None else {}
        self.before.setdefault(at, []).append(helper.make_node("DequantizeLinear", [wq, ws, wz], [w_dq], name=f"{name}_weight_DequantizeLinear", **attrs))
        new_inputs[1] = w_dq
        self.summary.weights[name] = {"tensor": w_name, "axis": axis, "scale_min": float(scales.min()), "scale_max": float(scales.max())}
        return scales, dequantized

    def _correct_bias(self, name: str, node, w: np.ndarray, dequantized: np.ndarray, mean: np.ndarray | None,
                      new_inputs: list[str]) -> None:
        """Take the weight rounding's mean output shift out of the bias (a Conv without one gets one)."""
        bias_name, _ = _bias_of(node, self.initializers, self.consumers)
        shift = _bias_shift(node, w, dequantized, mean)
        if shift is None or not np.all(np.isfinite(shift)):
            return
        if bias_name is None and node.op_type == "Conv":
            bias_name = f"{name}_bias"
            self.initializers[bias_name] = np.zeros(w.shape[0], np.float32)
            new_inputs.append(bias_name)
        if bias_name is None:
            return
        corrected = bias_name
        if len(self.consumers.get(bias_name, [])) > 1:  # an exporter's deduplicated constant (torch.onnx shares every
            # all-zero bias, and LayerNorm's zero beta, as one tensor): this layer gets a corrected copy of its own
            corrected = f"{bias_name}_corrected_{name}"
            if node.op_type in ("Conv", "Gemm"):
                new_inputs[2] = corrected
            else:  # MatMul: its one Add (_bias_of)
                add = self.consumers[node.output[0]][0]
                add.input[list(add.input).index(bias_name)] = corrected
        self.replaced_inits[corrected] = (self.initializers[bias_name] - shift).astype(np.float32)
        self.summary.bias_corrected[name] = float(np.abs(shift).max())

    def _int32_bias(self, name: str, at: int, scales: np.ndarray, a_scale: float, new_inputs: list[str]) -> None:
        """A Conv/Gemm bias as int32 at the activation scale × weight scale, where it fits (else it stays float)."""
        from onnx import helper

        b_name = new_inputs[2]
        bias = self.replaced_inits.get(b_name, self.initializers.get(b_name))
        b_scale = (a_scale * scales).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            representable = bias is not None and bias.shape == scales.shape and np.all(np.abs(bias / b_scale) < 2**31 - 1)
        if representable:  # else (a near-constant input: tiny scales) the bias stays float, exact
            bq = self.const(f"{b_name}_quantized_{name}", np.clip(np.round(bias / b_scale), -2**31, 2**31 - 1).astype(np.int32))
            bs = self.const(f"{b_name}_scale_{name}", b_scale)
            bz = self.const(f"{b_name}_zero_point_{name}", np.zeros_like(b_scale, np.int32))
            b_dq = f"{b_name}_dequantized_{name}"
            self.before[at].append(helper.make_node("DequantizeLinear", [bq, bs, bz], [b_dq], name=f"{name}_bias_DequantizeLinear", axis=0))
            new_inputs[2] = b_dq

    def quantize_link(self, name: str, tensors: list[str]) -> None:
        """A join or pool between int8 layers reads `tensors` through their Q/DQ pairs."""
        node = next(n for n in self.graph.node if n.name == name)
        missing = [t for t in tensors if t not in self.activations]
        if missing:
            raise BadInput(f"{node.op_type} {name}: no calibrated scale for its input {missing[0]}")
        new_inputs = [self.activation(t) if t in tensors else t for t in node.input]
        del node.input[:]
        node.input.extend(new_inputs)
        self.summary.links.append(name)

    def apply(self) -> None:
        """Initializers replaced and added, Q/DQ nodes put around their nodes, float weights now stored as int8 dropped."""
        from onnx import numpy_helper

        graph = self.graph
        kept = [i for i in graph.initializer if i.name not in self.replaced_inits]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in self.replaced_inits.items())
        graph.initializer.extend(self.new_inits)
        nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend(self.after.get(-1, []))
        for i, node in enumerate(nodes):
            graph.node.extend(self.before.get(i, []))
            graph.node.append(node)
            graph.node.extend(self.after.get(i, []))
        used = {t for n in graph.node for t in n.input}
        unused = [i for i in graph.initializer if i.name not in used]  # the float weights now stored as int8
        for init in unused:
            graph.initializer.remove(init)
