"""One latency type: every number edgekit prints says whether it was measured or predicted, and where."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Latency:
    kind: Literal["measured", "predicted"]
    source: str  # "measured on host (AMD EPYC ...) with openvino 2026.4" / "roofline of jetson-orin-nano"
    p50: float
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None
    min: float | None = None
    max: float | None = None
    std: float | None = None
    samples: int = 0

    @classmethod
    def from_samples(cls, times_ms: list[float], source: str) -> Latency:
        t = np.asarray(times_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(t, [50, 90, 99])
        return cls("measured", source, float(p50), float(p90), float(p99), float(t.mean()),
                   float(t.min()), float(t.max()), float(t.std()), len(t))

    @classmethod
    def predicted(cls, value_ms: float, source: str) -> Latency:
        return cls("predicted", source, float(value_ms))

    def label(self) -> str:
        return f"{self.p50:.3f} ms ({self.kind})"

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}
