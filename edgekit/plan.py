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

    @property
    def has_int8(self) -> bool:
        return self.default == "int8" or "int8" in self.layers.values()

    @property
    def float_precision(self) -> str:
        """The precision of the layers that are not int8: one per model in OpenVINO and ONNX Runtime."""
        floats = {self.default, *self.layers.values()} - {"int8"}
        if floats == {"fp16"} or (self.default == "fp16"):
            return "fp16"
        return "fp32"

    @property
    def label(self) -> str:
        """int8, fp16, fp32, or mixed: what the whole model is called in reports."""
        used = {self.default, *self.layers.values()}
        return used.pop() if len(used) == 1 else "mixed"

    def as_dict(self) -> dict:
        return {"default": self.default, "layers": dict(self.layers)}
