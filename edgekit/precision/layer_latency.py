"""Each quantizable layer's time in fp32 and in int8 on the target: measured as the runtime profiles
an fp32 engine and an all-int8 one (timed where the Measurer times, side by side, LAYER_ROUNDS rounds),
the runtime's kernels joined back to the ONNX layers they came from; or the roofline's where the target
cannot be measured."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import anchored, graph, roofline
from edgekit.latency import Latency
from edgekit.measurer import Measurer
from edgekit.plan import PrecisionPlan
from edgekit.precision.timing import Timing
from edgekit.targets import Target

LAYER_ROUNDS = 5


# How runtimes rename what they fuse: ONNX Runtime's layout transformer names a Conv it fused with its
# activation after the activation's output + _nchwc, and appends _token_N to nodes it rewrites.
RENAMED = re.compile(r"(_nchwc|_token_\d+)$")
FUSED_AFTER = ("Add", "Relu", "Clip", "BatchNormalization", "Mul", "Sigmoid", "Gelu")  # ops runtimes fuse into the layer before


def aliases_of(model, nodes: dict) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """Each layer's ONNX node, then the ops fused into it (its output's single consumer, while that is a
    bias Add or an activation), with their outputs: runtimes name a fused layer after any of them
    (OpenVINO names MatMul + bias Add after the Add, a model's last layer after its output)."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    chains = {}
    for name, node in nodes.items():
        chain = [(name, tuple(node.output))]
        for _ in range(2):
            users = consumers.get(node.output[0], [])
            if len(users) != 1 or users[0].op_type not in FUSED_AFTER:
                break
            node = users[0]
            chain.append((node.name, tuple(node.output)))
        chains[name] = chain
    return chains


def _join(times: list, executed: dict, aliases: dict, macs: dict[str, int]) -> tuple[dict[str, tuple[float, list[str]]], float]:
    """Each ONNX layer's time in one engine, and the time no layer claims. A layer's runtime layer is
    the one `executed` names for it or for the first of its aliases that has one, else a profiled
    layer named ALIAS, ALIAS/... or after the alias's output (less a runtime's renaming suffix). A runtime layer several ONNX layers fused
    into has its time split between them by MACs."""
    by_name = {t.name: t.time_ms for t in times}
    names: dict[str, list[str]] = {}
    for layer, chain in aliases.items():
        names[layer] = []
        for alias, outputs in chain:
            known = executed.get(alias)
            found = [known.runtime_layer] if known is not None and known.runtime_layer in by_name else \
                [n for n in by_name if n.startswith(alias + "/") or RENAMED.sub("", n) in (alias, *outputs)]
            if found:
                names[layer] = found
                break
    claims: dict[str, list[str]] = {}
    for layer, found in names.items():
        for name in found:
            claims.setdefault(name, []).append(layer)
    weight = {layer: max(macs.get(layer, 0), 1) for layer in aliases}
    joined = {layer: (sum(by_name[n] * weight[layer] / sum(weight[o] for o in claims[n]) for n in found), found)
              for layer, found in names.items() if found}
    return joined, sum(t for n, t in by_name.items() if n not in claims)


@dataclass(frozen=True)
class TwoEngines:
    """The fp32 engine's model and the all-int8 one's (every candidate layer int8)."""

    fp32_path: Path
    int8_path: Path
    float_p: str
    candidates: list[str]


def measure_layers(timing: Timing, measurer: Measurer, two: TwoEngines, aliases: dict, macs: dict[str, int],
             folder: Path) -> dict:
    """Build and load an fp32 and an all-int8 engine; time both whole (side by side), then take each
    layer's profiled time in both, LAYER_ROUNDS rounds in turn: medians, and their spread as the noise.
    Through an agent (`measurer`), the timing is the device's (the engines are built here; loaded here
    too, for which kernels ran: the same engine files)."""
    backend, target, threads, feed, settings = timing.backend, timing.target, timing.threads, timing.feed, timing.settings
    candidates = two.candidates
    plans = {"fp32": (two.fp32_path, PrecisionPlan(two.float_p)),
             "int8": (two.int8_path, PrecisionPlan(two.float_p, {name: "int8" for name in candidates}))}
    engines, artifacts = {}, {}
    for kind, (path, plan) in plans.items():
        (folder / kind).mkdir(exist_ok=True)
        artifacts[kind] = backend.build(onnx_path=path, plan=plan, target=target, out_dir=folder / kind)
        engines[kind] = backend.load(artifacts[kind], target=target, threads=threads)
    times, remote_layers = measurer.side_by_side(engines, artifacts, target, feed, settings, LAYER_ROUNDS)
    source = f"measured on {measurer.where(target)} with {backend.name}, {threads} threads, side by side"
    whole = {kind: Latency.from_samples(t, source) for kind, t in times.items()}
    per_round: dict[str, dict[str, list[float]]] = {"fp32": {}, "int8": {}}
    runtime: dict[str, dict[str, list[str]]] = {"fp32": {}, "int8": {}}
    every_alias = list(dict.fromkeys(alias for chain in aliases.values() for alias, _ in chain))
    executed = {kind: engine.executed(feed, every_alias) for kind, engine in engines.items()}
    unattributed: dict[str, list[float]] = {"fp32": [], "int8": []}
    for round_ in range(LAYER_ROUNDS):
        for kind, engine in engines.items():
            timed = remote_layers[kind][round_] if remote_layers else engine.layer_times(feed, settings.layer_runs or 20)
            joined, rest = _join(timed, executed[kind], aliases, macs)
            unattributed[kind].append(rest)
            for layer, (ms, found) in joined.items():
                per_round[kind].setdefault(layer, []).append(ms)
                runtime[kind][layer] = found
    layers = {}
    for layer in aliases:
        f, i = per_round["fp32"].get(layer), per_round["int8"].get(layer)
        record = {"kind": "measured", "fp32_ms": _median(f), "int8_ms": _median(i) if layer in candidates else None,
                  "fp32_runtime": runtime["fp32"].get(layer, []), "int8_runtime": runtime["int8"].get(layer, []),
                  "int8_kernel": executed["int8"][layer].exec_type if layer in executed["int8"] else None}
        if f and i and layer in candidates:
            record["gain_ms"] = record["fp32_ms"] - record["int8_ms"]
            record["noise_ms"] = max(_spread(f), _spread(i))
        layers[layer] = record
    return {"kind": "measured", "source": source, "threads": threads,
            "fp32": whole["fp32"].as_dict(), "int8": whole["int8"].as_dict(),
            "unattributed_ms": {kind: _median(v) for kind, v in unattributed.items()},
            "layers": layers, "engines": engines}


def _median(values: list[float] | None) -> float | None:
    return float(np.median(values)) if values else None


def _spread(values: list[float]) -> float:
    middle = sorted(values)[1:-1] if len(values) >= 5 else values
    return max(middle) - min(middle)


def _per_layer_ms(table: list[graph.Layer], target: Target, precision: str, fit) -> dict[str, float]:
    """Each layer's time off the device: its share of the anchored model, or its roofline without anchors."""
    if fit is not None:
        return {layer.name: anchored.layer_ms([layer], target, precision, fit) for layer in table}
    return {c.name: c.ms for c in roofline.layer_costs(table, target, precision)}


def predict_layers(onnx_path: Path, target: Target, float_p: str, candidates: list[str], nodes: dict, reason: str) -> dict:
    """The cost model's per-layer times at the float and the int8 rate, for a target not measurable here."""
    table = graph.layer_table(onnx_path)
    fit = anchored.fit_for(target)
    fp, i8 = _per_layer_ms(table, target, float_p, fit), _per_layer_ms(table, target, "int8", fit)
    model = f"anchored on {len(fit.anchors)} published latencies of {fit.target}" if fit else f"roofline of {target.name}"
    source = f"{model} (cannot measure here: {reason})"
    layers = {layer: {"kind": "predicted", "fp32_ms": fp.get(layer), "int8_ms": i8.get(layer) if layer in candidates else None}
              for layer in nodes}
    for layer in candidates:
        if layers[layer]["fp32_ms"] is not None and layers[layer]["int8_ms"] is not None:
            layers[layer]["gain_ms"] = layers[layer]["fp32_ms"] - layers[layer]["int8_ms"]
    return {"kind": "predicted", "source": source,
            "fp32": anchored.predict(table, target, float_p, fit).as_dict(),
            "int8": predicted_latency(table, target, PrecisionPlan(float_p, {n: "int8" for n in candidates})).as_dict(),
            "layers": layers}


def predicted_latency(table: list[graph.Layer], target: Target, plan: PrecisionPlan) -> Latency:
    """A per-layer plan off the device: int8 layers at the int8 rate, the rest at the float one, anchored on the
    target's published latencies with its bound (edgekit.anchored), or the bare roofline where it has none."""
    int8 = {layer.name: "int8" for layer in table if plan.precision_of(layer.name) == "int8"}
    latency = anchored.predict(table, target, plan.float_precision, precisions=int8)
    plan_words = f"per layer: {len(int8)} int8, the rest {plan.float_precision}"
    return dataclasses.replace(latency, source=latency.source.replace(f"{plan.float_precision}, per layer", plan_words, 1))
