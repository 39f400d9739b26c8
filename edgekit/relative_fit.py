"""Least squares of the relative error, no parameter negative, and its leave-one-out error: the arithmetic of the
anchored latency model (edgekit.anchored), apart from what it is fitted on.

A row is a model's features (`anchored.features`: roofline, compute and memory time, compute layers); a term
multiplies one of them (or 1). Relative, because anchors range from 0.6 to 420 ms and an absolute fit would let
the slowest decide alone; weighted, because a measurement on the target's own device is worth more than a figure
published for another setup.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

COLUMNS = {"overhead_ms": (None, " ms"), "slowdown": ("roofline_ms", " x roofline"),  # term: (feature, unit)
           "compute_slowdown": ("compute_ms", " x compute"), "memory_slowdown": ("memory_ms", " x memory"),
           "per_layer_ms": ("compute_layers", " ms x compute layers")}
TERMS = tuple(COLUMNS)
DEFAULT_TERMS = ("compute_slowdown", "memory_slowdown")
FEW_TERMS = ("slowdown",)  # fewer than 3 distinct anchor models (edgekit.anchored.MIN_DISTINCT)
MIN_FACTOR = 1.1  # a published or measured p50 itself varies by several percent run to run
UNTESTED_FACTOR = 2.0  # one anchor: nothing to leave out, so the bound is stated, not measured


def _column(term: str, feats: dict) -> float:
    feature = COLUMNS[term][0]
    return 1.0 if feature is None else float(feats[feature])


def _design(rows: list[dict], terms: tuple[str, ...]) -> np.ndarray:
    return np.array([[_column(t, r) for t in terms] for r in rows], dtype=np.float64)


def _solve(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least squares of the relative error: rows divided by the published value, solved for 1."""
    root = np.sqrt(w)
    params, *_ = np.linalg.lstsq(x / y[:, None] * root[:, None], root, rcond=None)
    return params


def solve(rows: list[dict], ms: list[float], terms: tuple[str, ...] = DEFAULT_TERMS,
          weights: list[float] | None = None) -> dict[str, float]:
    """The parameters of `terms` fitted on anchors (features, ms; `weights`, each 1 by default), none negative:
    when the full fit has a negative one, the best fit of the subsets whose parameters are all positive."""
    y = np.asarray(ms, dtype=np.float64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    x = _design(rows, terms)
    for keep in range(len(terms), 0, -1):
        best, best_cost = None, math.inf
        for subset in _subsets(len(terms), keep):
            params = _solve(x[:, subset], y, w)
            cost = float(np.sum(w * (x[:, subset] @ params / y - 1) ** 2))
            if np.all(params >= 0) and cost < best_cost:
                best, best_cost = dict(zip(subset, params, strict=True)), cost
        if best is not None:
            return {t: float(best.get(i, 0.0)) for i, t in enumerate(terms)}
    return dict.fromkeys(terms, 0.0)


def _subsets(n: int, k: int) -> list[list[int]]:
    return [list(c) for c in combinations(range(n), k)]


def model_ms(params: dict[str, float], feats: dict) -> float:
    return sum(value * _column(term, feats) for term, value in params.items())


def leave_one_out(rows: list[dict], ms: list[float], terms: tuple[str, ...] = DEFAULT_TERMS,
                  weights: list[float] | None = None) -> list[float]:
    """Each anchor's relative error (predicted / published − 1) under the fit on all the others."""
    errors, w = [], weights or [1.0] * len(rows)
    for i in range(len(rows)):
        rest = [j for j in range(len(rows)) if j != i]
        params = solve([rows[j] for j in rest], [ms[j] for j in rest], terms, [w[j] for j in rest])
        errors.append(model_ms(params, rows[i]) / ms[i] - 1)
    return errors


def interval_factor(loo_errors: list[float]) -> float:
    """The bound's factor: the largest leave-one-out error as a ratio (−50% and +100% are both a factor 2)."""
    if not loo_errors:
        return UNTESTED_FACTOR
    worst = max(abs(math.log(max(1 + e, 1e-9))) for e in loo_errors)
    return max(MIN_FACTOR, math.exp(worst))
