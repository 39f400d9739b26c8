"""Execution units: the groups of layers a runtime runs as one kernel, and the precision each runs in.

Runtimes fuse a convolution or matrix product with the element-wise ops that follow it (activation,
residual Add, then another activation): OpenVINO's CPU plugin, ONNX Runtime's FusedConv and
TensorRT all do. A fused ReLU costs next to nothing, a standalone one a whole pass over memory, so
the cost model times units, not ONNX nodes. The precision rules follow what edgekit's Q/DQ writer
(`edgekit.calibrate.qdq`) makes int8: the quantizable layers the plan names, and the residual joins
and pools between int8 layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgekit.graph import Layer

HEADS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
QUANTIZABLE = ("Conv", "Gemm", "MatMul")  # as edgekit.calibrate.qdq.QUANTIZABLE
EPILOGUE = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Gelu")
JOINS = ("Add",)
POOLS = ("GlobalAveragePool", "ReduceMean", "MaxPool", "AveragePool")
NON_NEGATIVE = ("Relu", "Clip", "Sigmoid", "HardSigmoid")  # their outputs take uint8 with zero point 0
RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")  # no arithmetic: the tensor keeps its precision


@dataclass(frozen=True)
class Unit:
    """One runtime kernel: a head layer and the layers fused after it."""

    head: Layer
    fused: tuple[Layer, ...] = ()
    signed_input: bool = True  # the input may be negative (int8: a non-zero zero point)

    @property
    def name(self) -> str:
        return self.head.name

    @property
    def layers(self) -> tuple[Layer, ...]:
        return (self.head, *self.fused)

    def key(self, precision: str = "fp32") -> str:
        """The head's configuration key plus what is fused into it: what the latency table is keyed by."""
        parts = [self.head.key(precision)]
        for layer in self.fused:
            extra = [s for t, s in zip(layer.inputs, layer.input_shapes, strict=False) if t not in self._internal]
            parts.append(f"+{layer.op}" + (f"({','.join('x'.join(map(str, s)) for s in extra)})" if extra else ""))
        if precision == "int8":
            parts.append("zp" if self.signed_input else "zp0")
        return " ".join(parts)

    @property
    def _internal(self) -> set[str]:
        return {t for layer in self.layers for t in layer.outputs}

    @property
    def external_inputs(self) -> list[tuple[str, tuple[int, ...], int]]:
        """(tensor, shape, dtype) of every activation the unit reads from outside."""
        seen, found = self._internal, []
        for layer in self.layers:
            dtypes = layer.input_dtypes or (1,) * len(layer.inputs)
            for t, s, d in zip(layer.inputs, layer.input_shapes, dtypes, strict=False):
                if t not in seen:
                    seen = seen | {t}
                    found.append((t, s, d))
        return found

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.layers[-1].outputs


def units(layers: list[Layer]) -> list[Unit]:
    """Group the layer table into units: each Conv/ConvTranspose/Gemm/MatMul takes the element-wise
    chain after it (activations, at most one Add of a same-shaped tensor or a bias) while each link
    has a single consumer; every other layer is a unit of its own."""
    consumers: dict[str, list[int]] = {}
    producer: dict[str, Layer] = {}
    for i, layer in enumerate(layers):
        for t in layer.inputs:
            consumers.setdefault(t, []).append(i)
        for t in layer.outputs:
            producer[t] = layer
    claimed: set[int] = set()
    found = []
    for i, layer in enumerate(layers):
        if i in claimed:
            continue
        fused: list[Layer] = []
        if layer.op in HEADS:
            current, joined = layer, False
            while current.outputs:
                users = consumers.get(current.outputs[0], [])
                if len(users) != 1 or users[0] in claimed:
                    break
                nxt = layers[users[0]]
                if nxt.op in EPILOGUE and len(nxt.inputs) == 1:
                    pass
                elif nxt.op in JOINS and not joined and _same_shapes(nxt):
                    joined = True
                else:
                    break
                fused.append(nxt)
                claimed.add(users[0])
                current = nxt
        found.append(Unit(layer, tuple(fused), _signed(layer, producer)))
    return found


def _same_shapes(layer: Layer) -> bool:
    """An Add the head can fuse: of two same-shaped activations, or of one activation and a bias."""
    return len(layer.inputs) == 1 or (len(layer.inputs) == 2 and layer.input_shapes[0] == layer.input_shapes[1])


def _signed(layer: Layer, producer: dict[str, Layer]) -> bool:
    if not layer.inputs:
        return True
    source = producer.get(layer.inputs[0])
    while source is not None and source.op in (*RESHAPES, *POOLS):
        source = producer.get(source.inputs[0]) if source.inputs else None
    return source is None or source.op not in NON_NEGATIVE


def unit_precisions(found: list[Unit], precisions: Mapping[str, str] | None = None,
                    default: str = "fp32") -> dict[str, str]:
    """Each unit's precision. A quantizable head takes the plan's precision (the plan's default for
    layers it does not name); a residual join whose inputs all come from int8 units and a pool fed
    by one run int8 (as edgekit's Q/DQ writer writes them); a reshape keeps its input's precision;
    every other op runs the float precision."""
    plan = dict(precisions or {})
    floating = default if default != "int8" else next((p for p in plan.values() if p != "int8"), "fp32")
    producer_unit: dict[str, str] = {}
    for unit in found:
        for layer in unit.layers:
            for t in layer.outputs:
                producer_unit[t] = unit.name
    result: dict[str, str] = {}
    for unit in found:
        head = unit.head
        if head.op in QUANTIZABLE:
            result[unit.name] = plan.get(head.name, default)
        elif head.name in plan and plan[head.name] != "int8":
            result[unit.name] = plan[head.name]
        else:
            sources = [producer_unit.get(t) for t in head.inputs]
            from_int8 = bool(sources) and all(s is not None and result.get(s) == "int8" for s in sources)
            link = (head.op in JOINS and len(sources) == 2) or (head.op in POOLS and len(sources) >= 1)
            if head.op in RESHAPES and sources and sources[0] is not None:
                result[unit.name] = result[sources[0]]
            else:
                result[unit.name] = "int8" if link and from_int8 else floating
    return result


def contexts(found: list[Unit], precision_of: Mapping[str, str]) -> dict[str, tuple[tuple[Layer, ...], bool, bool]]:
    """Per unit, what around it changes what the runtime runs: its siblings (the other heads reading
    its first input in the same precision), whether its output is requantized (every reader, looking
    through reshapes, is int8), and whether a layer makes its input (fed) rather than the model."""
    made = {t: unit for unit in found for layer in unit.layers for t in layer.outputs}
    readers: dict[str, list[Unit]] = {}
    for unit in found:
        for t, _, _ in unit.external_inputs:
            readers.setdefault(t, []).append(unit)

    def int8_readers(tensor: str) -> bool:
        users = readers.get(tensor, [])
        if not users:
            return False  # a model output
        for user in users:
            if user.head.op in RESHAPES and not user.fused:
                if not all(int8_readers(t) for t in user.outputs):
                    return False
            elif precision_of[user.name] != "int8":
                return False
        return True

    found_context = {}
    for unit in found:
        siblings: tuple[Layer, ...] = ()
        first = unit.head.inputs[0] if unit.head.inputs else None
        if unit.head.op in HEADS and first is not None:
            siblings = tuple(u.head for u in readers.get(first, []) if u is not unit and u.head.op in HEADS
                             and u.head.inputs and u.head.inputs[0] == first and precision_of[u.name] == precision_of[unit.name])
        quantized = bool(unit.outputs) and all(int8_readers(t) for t in unit.outputs)
        found_context[unit.name] = (siblings, quantized, first is not None and first in made)
    return found_context


def transitions(found: list[Unit], precision_of: Mapping[str, str]) -> tuple[int, int]:
    """The tensors that cross between an int8 and a float unit (the model's inputs into int8 units
    included), as (how many, their elements): the runtime quantizes, dequantizes or reorders each."""
    made: dict[str, str] = {}
    for unit in found:
        for t in unit.outputs:
            made[t] = precision_of[unit.name]
    count = elements = 0
    for unit in found:
        mine = precision_of[unit.name] == "int8"
        for t, shape, _ in unit.external_inputs:
            if mine != (made.get(t, "fp32") == "int8"):
                n = 1
                for d in shape:
                    n *= max(d, 1)
                count, elements = count + 1, elements + n
    return count, elements
