"""The hls4ml config edgekit writes: a fixed-point format and a reuse factor for every layer.

Widths come from the plan, per layer (int8 → 8 bits; any 4-16): a multiplying layer takes its own, the
layers after it (activation, pooling, reshape) its result's; the split between integer and fraction bits from
the ranges seen on the calibration split (activations) and the weights' largest magnitude, so small
weights keep their precision. Accumulators are exact: the product's bits plus ceil(log2(fan-in)) guard
bits, so a dot product never rounds or overflows before its result is rounded once (to nearest,
saturating) into the next layer's format. Reuse factors share the part's DSPs among the layers in
proportion to their multiply-accumulates, so every layer of the dataflow pipeline takes about as long.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from edgekit.backends.hls4ml_estimate import bram18
from edgekit.backends.hls4ml_graph import Prepared, Range
from edgekit.errors import BadInput

MULTIPLY = ("Conv1d", "Conv2d", "Linear")
ACTIVATIONS = ("ReLU", "LeakyReLU", "ELU", "PReLU", "Sigmoid", "Tanh", "Threshold", "Softmax")
RESHAPES = ("Flatten", "View", "view", "flatten", "squeeze", "unsqueeze")


@dataclass(frozen=True)
class Fixed:
    """ap_fixed<width, integer> (integer bits include the sign bit); `exact` types never round."""

    width: int
    integer: int
    signed: bool = True
    exact: bool = False

    @property
    def fraction(self) -> int:
        return self.width - self.integer

    def __str__(self) -> str:
        kind = "ap_fixed" if self.signed else "ap_ufixed"
        return f"{kind}<{self.width},{self.integer}>" if self.exact else f"{kind}<{self.width},{self.integer},AP_RND_CONV,AP_SAT>"


def width_of(precision: str, options: dict) -> int:
    """Total bits per value: the backend option `width` if given, else the plan's intN."""
    raw = options.get("width") or (precision[3:] if precision.startswith("int") else None)
    try:
        width = int(raw)
    except (TypeError, ValueError):
        raise BadInput(f"hls4ml builds fixed point: precision '{precision}' has no bit width (use int8, int4 or "
                       "backend option width: 4..16)") from None
    if not 4 <= width <= 16:
        raise BadInput(f"hls4ml fixed-point width must be 4 to 16 bits, got {width}")
    return width


def fitted(width: int, bound: Range | float, signed: bool | None = None) -> Fixed:
    """The format of `width` bits whose range just holds the values: the most fraction bits that fit."""
    low, high = (bound.low, bound.high) if isinstance(bound, Range) else (-abs(bound), abs(bound))
    signed = low < 0 if signed is None else signed
    magnitude = max(abs(low), abs(high))
    integer = (math.floor(math.log2(magnitude)) + 1 if magnitude > 0 else 1 - width // 2) + int(signed)
    return Fixed(width, integer, signed)


def accumulator(x: Fixed, w: Fixed, fan_in: int, bias: float) -> Fixed:
    """Exact sum of `fan_in` products x*w plus the bias: no rounding, no overflow."""
    product = x.integer - int(x.signed) + w.integer
    integer = max(product + math.ceil(math.log2(max(fan_in, 1))), fitted(x.width, bias).integer) + 1
    return Fixed(integer + x.fraction + w.fraction, integer, True, exact=True)


@dataclass(frozen=True)
class LayerChoice:
    """What edgekit chose for one hls4ml layer, for the report and the resource estimate."""

    name: str
    kind: str
    result: str
    weight: str = ""
    accum: str = ""
    n_in: int = 0  # multiplications per output pixel = n_in * n_out (conv: channels x kernel)
    n_out: int = 0
    pixels: int = 1  # output pixels the multiplier array runs for per inference
    reuse: int = 1

    @property
    def macs(self) -> int:
        return self.n_in * self.n_out * self.pixels


def multiply_nodes(prepared: Prepared) -> list[str]:
    """The torch.fx names of the layers with multipliers (Conv/Linear), in graph order: the order of the
    ONNX export's Conv/Gemm/MatMul layers a plan names."""
    gm = prepared.module
    return [n.name for n in gm.graph.nodes
            if n.op == "call_module" and type(gm.get_submodule(n.target)).__name__ in MULTIPLY]


def configure(config: dict, prepared: Prepared, width: int, dsp: int, macs_per_dsp: int = 1,
              widths: dict[str, int] | None = None) -> list[LayerChoice]:
    """Fill hls4ml's per-layer config (granularity 'name') in place; return the choices made. `widths`:
    per multiplying layer (fx name), else `width`; other layers keep their input's width."""
    gm = prepared.module
    layers = config["LayerName"]
    types: dict[str, Fixed] = {}
    bits: dict[str, int] = {}
    default = width
    choices: list[LayerChoice] = []
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        kind = type(module).__name__ if module is not None else str(node.target if node.op == "call_method" else getattr(node.target, "__name__", node.op))
        first = node.args[0].name if node.args and hasattr(node.args[0], "name") else None
        source = types.get(first) if first else None
        width = bits[node.name] = (widths or {}).get(node.name) or (bits.get(first, default) if first else default)
        seen = prepared.ranges.get(node.name)
        if node.op == "placeholder" or seen is None:
            types[node.name] = fitted(width, seen) if seen else source
            if node.name in layers and seen:
                layers[node.name]["Precision"]["result"] = str(types[node.name])
                choices.append(LayerChoice(node.name, "Input", str(types[node.name])))
            continue
        cfg = layers.setdefault(node.name, {"Precision": {}})
        precision = cfg.setdefault("Precision", {})
        result = fitted(width, seen)
        choice = LayerChoice(node.name, kind, str(result))
        if kind in MULTIPLY:
            weight = module.weight.detach().numpy()
            bias = module.bias.detach().numpy() if module.bias is not None else np.zeros(1)
            w_type = fitted(width, float(np.abs(weight).max()), signed=True)
            n_in, n_out = int(np.prod(weight.shape[1:])), int(weight.shape[0])
            acc = accumulator(source or result, w_type, n_in, float(np.abs(bias).max()))
            precision.update(weight=str(w_type), bias=str(Fixed(acc.width, acc.integer)), accum=str(acc), result=str(result))
            out_shape = node.meta["tensor_meta"].shape
            pixels = int(np.prod(out_shape[2:])) if kind != "Linear" else int(np.prod(out_shape[1:-1]))
            choice = LayerChoice(node.name, kind, str(result), str(w_type), str(acc), n_in, n_out, max(pixels, 1))
        elif kind in ("MaxPool1d", "MaxPool2d", "max_pool1d", "max_pool2d") and source is not None:
            result = source  # the max of values is one of them: no new format
            precision.update(result=str(result), accum=str(result))
            choice = LayerChoice(node.name, kind, str(result))
        elif kind in ("AvgPool1d", "AvgPool2d") and source is not None:
            guard = math.ceil(math.log2(int(np.prod(module.kernel_size))))
            precision.update(accum=str(Fixed(source.width + 2 * guard, source.integer + guard, source.signed, exact=True)),
                             result=str(result))
        elif kind in RESHAPES and source is not None:
            result = source
            precision["result"] = str(result)
            layers[f"transpose_input_for_{node.name}"] = {"Precision": {"result": str(source)}}
            choice = LayerChoice(node.name, kind, str(result))
        elif kind.startswith("BatchNorm"):
            scale = (module.weight / (module.running_var + module.eps).sqrt()).detach().numpy()
            shift = module.bias.detach().numpy() - module.running_mean.detach().numpy() * scale
            precision.update(scale=str(fitted(width, float(np.abs(scale).max()))),
                             bias=str(fitted(width, float(np.abs(shift).max()))), result=str(result))
        else:
            precision["result"] = str(result)
        types[node.name] = result
        choices.append(choice)
    return _reuse(config, choices, dsp * macs_per_dsp)


def _reuse(config: dict, choices: list[LayerChoice], multipliers: int) -> list[LayerChoice]:
    """Each multiplying layer gets a share of the part's multipliers in proportion to its MACs, and the
    smallest reuse factor hls4ml accepts whose multiplier count (n_in*n_out / reuse) fits that share."""
    total = sum(c.macs for c in choices) or 1
    out = []
    for choice in choices:
        if choice.n_in:
            share = max(1, math.floor(multipliers * choice.macs / total))
            valid = valid_reuse(choice.n_in, choice.n_out)
            reuse = next((r for r in valid if math.ceil(choice.n_in * choice.n_out / r) <= share), valid[-1])
            config["LayerName"][choice.name]["ReuseFactor"] = reuse
            choice = replace(choice, reuse=reuse)
        out.append(choice)
    return out


def fit_bram(config: dict, est: dict) -> bool:
    """When the estimate overflows the part's BRAM, raise the reuse factor of the layer whose weight ROM
    takes the most BRAM to the next one that shrinks it (fewer multipliers, a narrower ROM): one step.
    False when it fits, or when no folding of the ROMs could make it fit (the FIFOs alone overflow)."""
    capacity = est["capacity"].get("bram36")
    if capacity is None or est["used"]["bram36"] <= capacity:
        return False
    roms = [e for e in est["layers"] if e.get("rom_bram18")]
    smallest = {e["layer"]: min(bram18(r, math.ceil(e["n_in"] * e["n_out"] / r) * e["weight_bits"])
                                for r in valid_reuse(e["n_in"], e["n_out"]) if r >= e["reuse"]) for e in roms}
    others = sum(e["bram18"] for e in est["layers"]) - sum(e["rom_bram18"] for e in roms)
    if math.ceil((others + sum(smallest.values())) / 2) > capacity:
        return False
    for layer in sorted(roms, key=lambda e: -e["rom_bram18"]):
        n_in, n_out, bits = layer["n_in"], layer["n_out"], layer["weight_bits"]
        for reuse in valid_reuse(n_in, n_out):
            if reuse > layer["reuse"] and bram18(reuse, math.ceil(n_in * n_out / reuse) * bits) < layer["rom_bram18"]:
                config["LayerName"][layer["layer"]]["ReuseFactor"] = reuse
                return True
    return False


@functools.cache
def valid_reuse(n_in: int, n_out: int) -> tuple[int, ...]:
    """The reuse factors hls4ml accepts for an n_in x n_out multiplier array, ascending."""
    from hls4ml.backends import get_backend

    return tuple(get_backend("Vitis").get_valid_reuse_factors(n_in, n_out))
