"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019) for chains of convolutions,
the depthwise-separable ones above all: a depthwise filter's output channels differ in range by orders
of magnitude, and one per-tensor activation scale then wastes most of its levels on the widest channel.

For two convolutions A → act → B, with act positively homogeneous (none, ReLU), scaling A's output
channel i by 1/s_i and B's input channel i by s_i leaves the model's function unchanged; s_i =
sqrt(r_A,i / r_B,i) gives both the same range sqrt(r_A,i · r_B,i). A clip such as ReLU6 is not
homogeneous: clip(x/s, 0, 6) ≠ clip(x, 0, 6)/s. A channel crosses it only when its values on the
calibration split stay below the clip (there the clip is a ReLU), with s_i ≥ max_i / 6 so the
scaled values stay below it too; its other channels keep s_i = 1, so the model's function is exact on
every value the calibration split produced. Whether equalization helps a given model is measured,
not assumed (edgekit.calibrate.select).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOMOGENEOUS = ("Relu",)
SWEEPS = 4  # chains A → B → C share B: a few sweeps converge (the paper iterates to convergence)
S_RANGE = (1e-3, 1e3)  # never rescale a channel by more than this (dead channels have zero range)


@dataclass(frozen=True)
class Pair:
    first: str  # conv A's node name
    act: str | None  # the activation node between them (None: A feeds B directly)
    second: str  # conv B's node name
    clip: float | None  # the activation's upper bound when it is a clip (ReLU6: 6.0)


def _attr(node, name: str, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _clip_bounds(node, inits: dict) -> tuple[float, float] | None:
    lo = float(inits[node.input[1]]) if len(node.input) > 1 and node.input[1] in inits else _attr(node, "min", None)
    hi = float(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else _attr(node, "max", None)
    return None if lo is None or hi is None else (float(lo), float(hi))


def find_pairs(model, inits: dict) -> list[Pair]:
    """Conv → [ReLU | clip(0, c)] → Conv chains where A's output goes nowhere else, A is a plain or
    depthwise conv and B a plain or depthwise conv over A's channels."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    outputs = {o.name for o in model.graph.output}
    constants = dict(inits)  # a clip's bounds: initializers, or Constant nodes (TorchScript export)
    for node in model.graph.node:
        if node.op_type == "Constant" and _attr(node, "value", None) is not None:
            from onnx import numpy_helper

            constants[node.output[0]] = numpy_helper.to_array(_attr(node, "value", None))
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for t in set(node.input):
            readers[t] = readers.get(t, 0) + 1

    def only_user(tensor: str):
        users = consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in outputs else None

    def grouping_ok(conv) -> bool:  # plain or depthwise, weights (and bias) its own: rescaling touches no one else
        w = inits.get(conv.input[1])
        group = int(_attr(conv, "group", 1))
        own = all(readers.get(t, 0) == 1 for t in conv.input[1:3] if t)
        return w is not None and w.ndim == 4 and own and (group == 1 or group == w.shape[0] and w.shape[1] == 1)

    pairs = []
    for a in model.graph.node:
        if a.op_type != "Conv" or not grouping_ok(a):
            continue
        nxt = only_user(a.output[0])
        act, clip = None, None
        if nxt is not None and nxt.op_type in HOMOGENEOUS:
            act, nxt = nxt, only_user(nxt.output[0])
        elif nxt is not None and nxt.op_type == "Clip":
            bounds = _clip_bounds(nxt, constants)
            if bounds is None or bounds[0] != 0.0:
                continue
            act, clip, nxt = nxt, bounds[1], only_user(nxt.output[0])
        if nxt is None or nxt.op_type != "Conv" or not grouping_ok(nxt):
            continue
        wa, wb = inits[a.input[1]], inits[nxt.input[1]]
        depthwise_b = int(_attr(nxt, "group", 1)) > 1
        if (wb.shape[0] if depthwise_b else wb.shape[1]) != wa.shape[0]:
            continue
        pairs.append(Pair(a.name, act.name if act is not None else None, nxt.name, clip))
    return pairs


def _scales(wa: np.ndarray, wb: np.ndarray, depthwise_b: bool, channel_max: np.ndarray | None, clip: float | None) -> np.ndarray:
    r_a = np.abs(wa).reshape(wa.shape[0], -1).max(axis=1)
    r_b = np.abs(wb).reshape(wb.shape[0], -1).max(axis=1) if depthwise_b else np.abs(wb).transpose(1, 0, 2, 3).reshape(wb.shape[1], -1).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(r_a / r_b)
    s = np.where(np.isfinite(s) & (r_a > 0) & (r_b > 0), np.clip(s, *S_RANGE), 1.0)
    if clip is not None:
        if channel_max is None:
            return np.ones_like(s)
        below = channel_max < clip  # the clip never acted on this channel: there it is a ReLU
        s = np.where(below, np.maximum(s, channel_max / clip), 1.0)
    return s


def equalize(model, pairs: list[Pair], channel_max: dict[str, np.ndarray]) -> tuple[object, dict[str, dict]]:
    """A copy of `model` with every pair equalized; `channel_max` maps a clipped conv's output tensor
    to its per-channel maximum on the calibration split. Returns the model and, per pair, the ratio
    of the widest to the narrowest channel range of A before and after (what equalization is for)."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = {n.name: n for n in out.graph.node}
    touched = {t for p in pairs for n in (nodes[p.first], nodes[p.second]) for t in n.input[1:3] if t}
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in out.graph.initializer if i.name in touched}
    spread: dict[str, float] = {}
    for _ in range(SWEEPS):
        for pair in pairs:
            a, b = nodes[pair.first], nodes[pair.second]
            wa, wb = inits[a.input[1]], inits[b.input[1]]
            depthwise_b = int(_attr(b, "group", 1)) > 1
            s = _scales(wa, wb, depthwise_b, channel_max.get(a.output[0]), pair.clip)
            if pair.first not in spread:
                r = np.abs(wa).reshape(wa.shape[0], -1).max(axis=1)
                spread[pair.first] = float(r.max() / max(r[r > 0].min(), 1e-12)) if np.any(r > 0) else 1.0
            inits[a.input[1]] = wa / s.reshape(-1, 1, 1, 1)
            if len(a.input) > 2 and a.input[2]:
                inits[a.input[2]] = inits[a.input[2]] / s
            inits[b.input[1]] = wb * (s.reshape(-1, 1, 1, 1) if depthwise_b else s.reshape(1, -1, 1, 1))
            if a.output[0] in channel_max:
                channel_max[a.output[0]] = channel_max[a.output[0]] / s
    for init in out.graph.initializer:
        if init.name in inits:
            init.CopyFrom(numpy_helper.from_array(inits[init.name].astype(np.float32), init.name))
    result = {}
    for first, before in spread.items():
        r = np.abs(inits[nodes[first].input[1]]).reshape(inits[nodes[first].input[1]].shape[0], -1).max(axis=1)
        result[first] = {"range_spread_before": before,
                         "range_spread_after": float(r.max() / max(r[r > 0].min(), 1e-12)) if np.any(r > 0) else 1.0}
    return out, result


def clipped_outputs(model, pairs: list[Pair]) -> list[str]:
    """The conv outputs whose per-channel maxima the clip rule needs."""
    nodes = {n.name: n for n in model.graph.node}
    return [nodes[p.first].output[0] for p in pairs if p.clip is not None]
