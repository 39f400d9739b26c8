"""A precision plan: which precision each layer runs in (a default plus per-layer overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgekit.errors import BadInput

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class PrecisionPlan:
    default: str = "fp32"
    layers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for where, value in [("default", self.default), *self.layers.items()]:
            if value not in PRECISIONS:
                raise BadInput(f"precision plan: '{value}' for {where} is not one of {', '.join(PRECISIONS)}")

    def precision_of(self, layer: str) -> str:
        return self.layers.get(layer, self.default)

    def as_dict(self) -> dict:
        return {"default": self.default, "layers": dict(self.layers)}
