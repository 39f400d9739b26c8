"""Whether two runs of a model agree: the fp32 check every export and every normalised ONNX passes
(below the graph and the loaders, which both use it)."""

from __future__ import annotations

import numpy as np

from edgekit.errors import Failure

# fp32 export check: |onnx - torch| <= ATOL + RTOL * |torch|, elementwise.
RTOL, ATOL = 1e-3, 1e-4


def compare_outputs(ours: list, reference: list, what: str) -> float:
    """The largest |ours − reference| over every output, or a Failure naming `what` when the counts or
    shapes differ or any element is outside |ours − reference| ≤ ATOL + RTOL·|reference|."""
    if len(ours) != len(reference):
        raise Failure(f"{what} has {len(ours)} outputs, the source model {len(reference)}")
    worst, within = 0.0, True
    for a, b in zip(ours, reference, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            raise Failure(f"{what}: output shape {a.shape} differs from the source model's {b.shape}")
        diff = np.abs(a - b)
        worst = max(worst, float(diff.max(initial=0.0)))
        within &= bool(np.all(diff <= ATOL + RTOL * np.abs(b)))
    if not within:
        raise Failure(f"{what} differs from the source model: max |diff| {worst:.3g} (rtol {RTOL}, atol {ATOL})")
    return worst
