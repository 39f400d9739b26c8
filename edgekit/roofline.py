"""The roofline: each layer takes the longer of its compute time at the target's peak rate for its
precision and its memory time at the target's bandwidth. The floor every other latency model stands
on (`edgekit.latency_table` falls back to it for units it cannot time, `edgekit.cost` corrects it),
and what a target that cannot run here gets."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.graph import Layer
from edgekit.latency import Latency
from edgekit.targets import Target

BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}


@dataclass(frozen=True)
class LayerCost:
    name: str
    compute_ms: float
    memory_ms: float

    @property
    def ms(self) -> float:
        return max(self.compute_ms, self.memory_ms)


def layer_costs(layers: list[Layer], target: Target, precision: str = "fp32") -> list[LayerCost]:
    peak = target.peak_ops_per_s(precision)
    bandwidth = target.memory_bandwidth_gbs * 1e9
    scale = BYTES_PER_VALUE.get(precision, 4) / 4  # the layer table counts fp32 bytes
    return [LayerCost(layer.name, 2 * layer.macs / peak * 1e3, layer.bytes_moved * scale / bandwidth * 1e3)
            for layer in layers]


def predict_latency(layers: list[Layer], target: Target, precision: str = "fp32") -> Latency:
    total = sum(cost.ms for cost in layer_costs(layers, target, precision))
    return Latency.predicted(total, f"roofline of {target.name} ({precision}, peak and bandwidth from its profile)")
