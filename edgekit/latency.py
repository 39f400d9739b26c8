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
    # a prediction's bound (edgekit.anchored: from the target's leave-one-out error over its published anchors);
    # None where no bound is known, and then left out of as_dict
    low: float | None = None
    high: float | None = None

    @classmethod
    def from_samples(cls, times_ms: list[float], source: str) -> Latency:
        t = np.asarray(times_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(t, [50, 90, 99])
        return cls("measured", source, float(p50), float(p90), float(p99), float(t.mean()),
                   float(t.min()), float(t.max()), float(t.std()), len(t))

    @classmethod
    def predicted(cls, value_ms: float, source: str, low: float | None = None, high: float | None = None) -> Latency:
        def number(v: float | None) -> float | None:
            return None if v is None else float(v)

        return cls("predicted", source, float(value_ms), low=number(low), high=number(high))

    def label(self) -> str:
        bound = "" if self.high is None else f", {self.low or 0:.3f}-{self.high:.3f}"
        return f"{self.p50:.3f} ms ({self.kind}{bound})"

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}
