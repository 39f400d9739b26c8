"""Single-unit ONNX models: one execution unit (a layer and what the runtime fuses into it) rebuilt
alone, with random weights of the right shapes, for the latency table to time on the device.

An int8 unit is written as edgekit's Q/DQ writer writes it inside a model (`edgekit.calibrate.qdq`):
uint8 activation inputs (what an int8 producer hands over), per-channel int8 weights (±63 on 7-bit
targets, as there), an int32 bias, Q/DQ on both inputs of a fused residual Add, and a Q/DQ on its
output when its readers are int8, so the runtime fuses the requantization into the kernel as it does
inside an int8 chain. The harness's own nodes
(input quantizers, output dequantizer) are named with HARNESS so the timing can leave them out.
"""

from __future__ import annotations

import numpy as np

from edgekit.fusion import NON_NEGATIVE, QUANTIZABLE, Unit
from edgekit.graph import Const, Layer

HARNESS = "harness_"  # prefix of every node that is the harness's, not the unit's
ACTIVATION_SCALE = 0.05
NP_TYPES = {1: np.float32, 10: np.float16, 11: np.float64, 6: np.int32, 7: np.int64, 9: np.bool_, 2: np.uint8,
            3: np.int8, 16: np.float32}


def _constant(c: Const, rng: np.random.Generator) -> np.ndarray:
    dtype = NP_TYPES.get(c.dtype, np.float32)
    if c.values is not None:
        return np.asarray(c.values, dtype=np.float64).astype(dtype).reshape(c.shape)
    if np.issubdtype(dtype, np.floating):
        return (rng.standard_normal(c.shape) * 0.1).astype(dtype)
    return np.zeros(c.shape, dtype)


def _inputs(layer: Layer, activations: list[str], constants: dict[int, str]) -> list[str]:
    """The node's input list: constants at their positions, activations filling the others in order."""
    names, acts = [], iter(activations)
    for i in range(len(layer.inputs) + len(layer.constants)):
        names.append(constants[i] if i in constants else next(acts))
    return names


def _weight_axis(layer: Layer, shape: tuple[int, ...]) -> int | None:
    """The output-channel axis of the weight, as edgekit.calibrate.qdq.weight_input chooses it."""
    if layer.op == "Conv":
        return 0
    if layer.op == "Gemm":
        return 0 if layer.attr("transB", 0) else 1
    return 1 if len(shape) == 2 else None


def unit_model(unit: Unit, precision: str = "fp32", *, weight_bits: int = 8, seed: int = 0,
               siblings: tuple[Layer, ...] = (), quantized_output: bool | None = None, fed: bool = False):
    """The unit as a standalone onnx.ModelProto, in `precision` (int8 as Q/DQ, else float).

    quantized_output: its output is requantized (every reader is int8; default: when the unit is).
    fed: its input is made by a layer, not the model's input: a harness 1×1 convolution in the same
    precision makes it, so the unit runs as it does in a chain, its worker threads awake and its input
    in the layout and type a producer hands over (timing one kernel alone right after the harness's
    input reorder costs tiny kernels a thread wake-up they do not pay inside a model).
    siblings: other layers that read the unit's first input, added as harness branches (a runtime's
    rewrite of a layer may depend on who else reads its input)."""
    from onnx import checker, helper, shape_inference

    int8 = precision == "int8"
    quantized_output = int8 if quantized_output is None else quantized_output
    built = _UnitGraph(unit, int8, np.random.default_rng(seed), 2 ** (weight_bits - 1) - 1)
    built.add_inputs(fed)
    last_out = built.add_layers()
    for k, sibling in enumerate(siblings):
        last_out = [*last_out, *_sibling(sibling, unit, k, built.nodes, built.const, built.weight_dq if int8 else None,
                                         built.sources)]
    results = built.outputs(last_out, quantized_output)
    graph = helper.make_graph(built.nodes, f"unit_{unit.name}", built.graph_inputs, results, built.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(unit.head.opset, 13))])
    model.ir_version = min(model.ir_version, 10)
    model = shape_inference.infer_shapes(model)
    known = {v.name: v for v in model.graph.value_info}
    for out in model.graph.output:
        if out.name in known:
            out.CopyFrom(known[out.name])
    checker.check_model(model)
    return model


class _UnitGraph:
    """The nodes, initializers and inputs of one unit's standalone graph, added in graph order (the
    random weights drawn in that order too: one seed, one model)."""

    def __init__(self, unit: Unit, int8: bool, rng: np.random.Generator, qmax: int):
        self.unit, self.int8, self.rng, self.qmax = unit, int8, rng, qmax
        self.nodes: list = []
        self.inits: list = []
        self.graph_inputs: list = []
        self.sources: dict[str, str] = {}  # the unit's external inputs → the tensor of this graph it reads

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def qdq(self, tensor: str, zero_point: int, tag: str) -> str:
        from onnx import helper

        scale = self.const(f"{tag}_scale", np.array(ACTIVATION_SCALE, np.float32))
        zp = self.const(f"{tag}_zero_point", np.array(zero_point, np.uint8))
        self.nodes.append(helper.make_node("QuantizeLinear", [tensor, scale, zp], [f"{tag}_q"], name=f"{tag}_QuantizeLinear"))
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_q", scale, zp], [f"{tag}_dq"], name=f"{tag}_DequantizeLinear"))
        return f"{tag}_dq"

    def weight_dq(self, name: str, shape: tuple[int, ...], axis: int | None) -> str:
        """Per-channel int8 weights (±qmax) behind a DequantizeLinear, as the Q/DQ writer stores them."""
        from onnx import helper

        qmax = self.qmax
        scales = np.full(shape[axis] if axis is not None else (), 0.01, np.float32)
        q = self.rng.integers(-qmax, qmax + 1, shape, dtype=np.int8)
        self.nodes.append(helper.make_node(
            "DequantizeLinear", [self.const(f"{name}_q", q), self.const(f"{name}_s", scales),
                                 self.const(f"{name}_z", np.zeros_like(scales, np.int8))],
            [name], name=f"{name}_DequantizeLinear", **({"axis": axis} if axis is not None else {})))
        return name

    def add_inputs(self, fed: bool) -> None:
        """The graph's inputs (uint8 behind a DequantizeLinear for an int8 unit) and, when `fed`, the
        harness convolution that makes the first one."""
        from onnx import TensorProto, helper

        int8, unit = self.int8, self.unit
        for i, (tensor, shape, dtype) in enumerate(unit.external_inputs):
            name, tag = f"input{i}", f"{HARNESS}in{i}"
            floating = dtype in (1, 10, 16)
            zero_point = 128 if (unit.signed_input or i > 0) else 0
            producer = fed and i == 0 and floating and len(shape) == 4
            if int8 and floating:  # an int8 unit reads uint8, as an int8 producer hands it over
                self.graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.UINT8, list(shape)))
                scale = self.const(f"{tag}_scale", np.array(ACTIVATION_SCALE, np.float32))
                zp = self.const(f"{tag}_zero_point", np.array(zero_point, np.uint8))
                self.nodes.append(helper.make_node("DequantizeLinear", [name, scale, zp], [f"{tag}_dq"], name=f"{tag}_DequantizeLinear"))
                name = f"{tag}_dq"
            else:
                self.graph_inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
            if producer:
                channels = shape[1]
                w = (self.weight_dq(f"{tag}_w", (channels, channels, 1, 1), 0) if int8 else
                     self.const(f"{tag}_w", (self.rng.standard_normal((channels, channels, 1, 1)) * 0.1).astype(np.float32)))
                self.nodes.append(helper.make_node("Conv", [name, w], [f"{tag}_made"], name=f"{tag}_producer"))
                name = self.qdq(f"{tag}_made", zero_point, f"{tag}_made") if int8 else f"{tag}_made"
            self.sources[tensor] = name

    def add_layers(self) -> list[str]:
        """The unit's layers in order; the last one's outputs."""
        from onnx import helper

        renamed: dict[str, str] = {}  # the model's tensor names → this graph's
        last_out: list[str] = []
        for position, layer in enumerate(self.unit.layers):
            quantized_head = self.int8 and position == 0 and layer.op in QUANTIZABLE
            acts = self._activations(position, layer, renamed)
            constants = self._constants(layer, quantized_head)
            outputs = [f"{layer.name}_out{k}" for k in range(len(layer.outputs))]
            attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in layer.attrs}
            self.nodes.append(helper.make_node(layer.op, _inputs(layer, acts, constants), outputs, name=layer.name, **attrs))
            renamed.update(zip(layer.outputs, outputs, strict=True))
            last_out = outputs
        return last_out

    def _activations(self, position: int, layer: Layer, renamed: dict[str, str]) -> list[str]:
        acts = []
        for t in layer.inputs:
            if t in renamed:
                name = renamed[t]
                if self.int8 and layer.op == "Add":  # the fused residual join reads both its inputs int8
                    previous = self.unit.layers[position - 1].op
                    name = self.qdq(name, 0 if previous in NON_NEGATIVE else 128, f"join{position}")
            else:
                name = self.sources[t]
            acts.append(name)
        return acts

    def _constants(self, layer: Layer, quantized_head: bool) -> dict[int, str]:
        """The layer's constants by input position: random values of their shapes, the weight int8 and
        the bias int32 in the unit's quantized head layer."""
        from onnx import helper

        constants: dict[int, str] = {}
        for c in layer.constants:
            if c.dtype == 0:
                constants[c.index] = ""
                continue
            tensor_name = f"{layer.name}_c{c.index}"
            value = _constant(c, self.rng)
            if quantized_head and c.index == 1 and value.dtype == np.float32 and value.ndim >= 2:
                constants[c.index] = self.weight_dq(tensor_name, c.shape, _weight_axis(layer, c.shape))
            elif quantized_head and c.index == 2 and layer.op in ("Conv", "Gemm") and value.ndim == 1:
                scales = np.full(value.shape, ACTIVATION_SCALE * 0.01, np.float32)
                self.nodes.append(helper.make_node(
                    "DequantizeLinear", [self.const(f"{tensor_name}_q", self.rng.integers(-1000, 1000, value.shape, dtype=np.int32)),
                                         self.const(f"{tensor_name}_s", scales),
                                         self.const(f"{tensor_name}_z", np.zeros(value.shape, np.int32))],
                    [tensor_name], name=f"{layer.name}_bias_DequantizeLinear", axis=0))
                constants[c.index] = tensor_name
            else:
                constants[c.index] = self.const(tensor_name, value)
        return constants

    def outputs(self, last_out: list[str], quantized_output: bool) -> list:
        """The graph's outputs, requantized (a harness Q/DQ) when `quantized_output`."""
        from onnx import TensorProto, helper

        results = []
        for k, out in enumerate(last_out):
            final = out
            if quantized_output and (self.int8 or not out.startswith(HARNESS)):
                non_negative = self.unit.layers[-1].op in NON_NEGATIVE and not out.startswith(HARNESS)
                final = self.qdq(out, 0 if non_negative else 128, f"{HARNESS}out{k}")
            results.append(helper.make_tensor_value_info(final, TensorProto.UNDEFINED, None))
        return results


def chain_model(depth: int, channels: int = 8, size: int = 4):
    """`depth` small 1×1 convolutions in a row: the runtime's per-layer overhead, by difference."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    current = "input0"
    for i in range(depth):
        w = numpy_helper.from_array((rng.standard_normal((channels, channels, 1, 1)) * 0.3).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [current, f"w{i}"], [f"y{i}"], name=f"conv{i}"))
        nodes.append(helper.make_node("Relu", [f"y{i}"], [f"r{i}"], name=f"relu{i}"))
        current = f"r{i}"
    shape = [1, channels, size, size]
    graph = helper.make_graph(nodes, f"chain{depth}", [helper.make_tensor_value_info("input0", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 10)
    return model


def _sibling(layer: Layer, unit: Unit, k: int, nodes: list, const, weight_dq, sources: dict) -> list[str]:
    """A harness branch: `layer` alone (its weights int8 when weight_dq is given), reading the unit's input."""
    from onnx import helper

    rng = np.random.default_rng(k)
    constants = {}
    for c in layer.constants:
        tensor = f"{HARNESS}sib{k}_c{c.index}"
        if c.dtype == 0:
            constants[c.index] = ""
        elif weight_dq is not None and c.index == 1 and len(c.shape) >= 2 and layer.op == "Conv":
            constants[c.index] = weight_dq(tensor, c.shape, 0)
        else:
            constants[c.index] = const(tensor, _constant(c, rng))
    acts = [sources[t] for t in layer.inputs if t in sources] or [sources[unit.head.inputs[0]]]
    outputs = [f"{HARNESS}sib{k}_out"]
    attrs = {key: list(v) if isinstance(v, tuple) else v for key, v in layer.attrs}
    nodes.append(helper.make_node(layer.op, _inputs(layer, acts, constants), outputs, name=f"{HARNESS}sib{k}", **attrs))
    return outputs
