"""A precision plan: which precision each layer runs in (a default plus per-layer overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgekit.errors import BadInput

FLOATS = ("fp32", "fp16")
# Integer widths: int8 everywhere; any width from 4 to 16 bits where the backend builds fixed point (hls4ml's
# ap_fixed on FPGAs). Whether a target runs a width is its registry entry's business (precisions.supported).
FIXED_POINT = tuple(f"int{bits}" for bits in range(4, 17))
PRECISIONS = (*FLOATS, *FIXED_POINT)


def bits(precision: str) -> int | None:
    """The width of an integer precision (int8 → 8); None for a float one."""
    return int(precision[3:]) if precision in FIXED_POINT else None


@dataclass(frozen=True)
class PrecisionPlan:
    default: str = "fp32"
    layers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for where, value in [("default", self.default), *self.layers.items()]:
            if value not in PRECISIONS:
                raise BadInput(f"precision plan: '{value}' for {where} is not one of fp32, fp16, int8 (int4..int16 on FPGAs)")

    def precision_of(self, layer: str) -> str:
        return self.layers.get(layer, self.default)

    @property
    def quantized(self) -> bool:
        """Some layer runs in integers: the model needs calibrated ranges."""
        return any(bits(p) for p in (self.default, *self.layers.values()))

    @property
    def float_precision(self) -> str:
        """The precision of the layers that are not integer: one per model in OpenVINO and ONNX Runtime."""
        floats = {self.default, *self.layers.values()} & set(FLOATS)
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
