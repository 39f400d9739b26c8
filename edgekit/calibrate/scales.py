"""From tensor statistics to int8 quantization parameters.

Activations are per tensor: min-max, percentile, entropy (TensorRT's KL-divergence calibrator) or
MSE-optimal clipping, symmetric (int8, zero point 0: TensorRT) or asymmetric (uint8 with a zero
point: OpenVINO, ONNX Runtime, LiteRT). Weights are per output channel, symmetric, narrow range
[-127, 127], as every one of those runtimes wants them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgekit.calibrate.observers import TensorStats
from edgekit.errors import BadInput

METHODS = ("minmax", "percentile", "entropy", "mse")
QMAX = 127
ENTROPY_TARGET_BINS = 128  # TensorRT's: the positive half of int8
MIN_RANGE = 1e-8  # a constant tensor (zero range) still gets a valid, tiny scale


@dataclass(frozen=True)
class QParams:
    """One tensor's quantizer: real value = (q - zero_point) * scale, q in the dtype's range."""

    scale: float
    zero_point: int
    dtype: str  # "uint8" (asymmetric) or "int8" (symmetric)
    lo: float  # the clipping range the scale covers
    hi: float
    method: str

    @property
    def amax(self) -> float:
        return max(abs(self.lo), abs(self.hi))

    def as_dict(self) -> dict:
        return asdict(self)


def _cdf_value(hist: np.ndarray, edges: np.ndarray, fraction: float) -> float:
    cdf = np.cumsum(hist) / max(hist.sum(), 1)
    i = int(np.searchsorted(cdf, fraction))
    return float(edges[min(i + 1, len(edges) - 1)])


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) of two unnormalised histograms; where p has mass and q has none, q gets a small
    floor (1e-4 of a bin's share) instead of making the divergence infinite."""
    if q.sum() == 0:
        return np.inf
    mask = p > 0
    q = np.where(mask & (q == 0), 1e-4 * q.sum() / max(mask.sum(), 1), q)
    p, q = p[mask] / p.sum(), q[mask] / q.sum()
    return float(np.sum(p * np.log(p / q)))


def entropy_amax(abs_hist: np.ndarray, abs_edges: np.ndarray, target_bins: int = ENTROPY_TARGET_BINS) -> float:
    """TensorRT's entropy calibration: the |x| threshold whose `target_bins`-level quantization of the
    histogram (outliers folded into the last bin) loses the least information (KL divergence).
    As NVIDIA's pytorch-quantization does, the zero bin is levelled with its neighbour first: the
    spike of exact zeros after a ReLU would otherwise pull the threshold far into the real values."""
    n = len(abs_hist)
    if abs_hist.sum() == 0:
        return float(abs_edges[-1])
    hist = abs_hist.astype(np.float64)
    hist[0] = hist[1]

    def kl_at(i: int) -> float:
        reference = hist[:i].copy()
        reference[-1] += hist[i:].sum()
        if reference.sum() == 0:
            return np.inf
        # Merge the first i bins into target_bins buckets, spread each bucket back over its non-empty bins.
        starts = (np.arange(target_bins) * i) // target_bins
        sums = np.add.reduceat(hist[:i], starts)
        nonzero = np.add.reduceat((hist[:i] > 0).astype(np.float64), starts)
        bucket = np.repeat(np.arange(target_bins), np.diff(np.append(starts, i)))
        expanded = np.where(hist[:i] > 0, (sums / np.maximum(nonzero, 1))[bucket], 0.0)
        return _kl(reference, expanded)

    tried = {i: kl_at(i) for i in range(target_bins, n + 1)}  # every threshold, as TensorRT
    best = min(tried, key=tried.get) if np.isfinite(min(tried.values())) else n
    return float(abs_edges[best])


def _mse_of(centers: np.ndarray, counts: np.ndarray, lo: float, hi: float, levels: int) -> float:
    scale = max(hi - lo, MIN_RANGE) / levels
    q = np.clip(np.round((centers - lo) / scale), 0, levels) * scale + lo
    return float(np.sum(counts * (centers - q) ** 2))


def mse_range(stats: TensorStats, symmetric: bool, grid: int = 100) -> tuple[float, float]:
    """The clipping range with the least expected squared quantization error over the histogram."""
    if symmetric:
        centers = (stats.abs_edges[:-1] + stats.abs_edges[1:]) / 2
        amax = float(stats.abs_edges[-1])
        errors = [(_mse_of(centers, stats.abs_hist, -a, a, 2 * QMAX), a) for a in amax * np.arange(1, grid + 1) / grid]
        a = min(errors)[1]
        return -a, a
    centers = (stats.hist_edges[:-1] + stats.hist_edges[1:]) / 2
    lo, hi = stats.real_min, stats.real_max
    errors = [(_mse_of(centers, stats.hist, lo * f, hi * f, 255), f) for f in np.arange(1, grid + 1) / grid]
    f = min(errors)[1]
    return lo * f, hi * f


def saturated_ends(stats: TensorStats, ratio: float = 8.0, share: float = 1e-4) -> tuple[bool, bool]:
    """Whether the lowest / highest bin holds a spike of saturated values (a ReLU6 or Clip output):
    those values are real, often many, and clipping them below their bound costs dearly."""
    hist = stats.hist
    total = max(hist.sum(), 1)
    filled = np.flatnonzero(hist)
    if filled.size < 17:
        return False, False
    lo_i, hi_i = filled[0], filled[-1]

    def spike(i: int, neighbours: np.ndarray) -> bool:
        return hist[i] >= share * total and hist[i] > ratio * max(neighbours.mean(), 1)

    return (spike(lo_i, hist[lo_i + 1: lo_i + 17]) and stats.real_min < 0,
            spike(hi_i, hist[max(hi_i - 16, 0): hi_i]))


def activation_range(stats: TensorStats, method: str, *, symmetric: bool, percentile: float = 99.99) -> tuple[float, float]:
    """The clipping range of one activation tensor by `method`, over its real (non-sentinel) values."""
    if method not in METHODS:
        raise BadInput(f"unknown calibration method '{method}' (known: {', '.join(METHODS)})")
    if not 50 < percentile <= 100:
        raise BadInput(f"--percentile must be in (50, 100], got {percentile}")
    lo, hi = stats.real_min, stats.real_max
    if method == "minmax":
        pass
    elif method == "percentile":
        if symmetric:
            a = _cdf_value(stats.abs_hist, stats.abs_edges, percentile / 100)
            lo, hi = -a, a
        else:
            lo = min(_cdf_value(stats.hist, stats.hist_edges, 1 - percentile / 100), 0.0)
            hi = max(_cdf_value(stats.hist, stats.hist_edges, percentile / 100), 0.0)
    elif method == "entropy":
        unsigned = not symmetric and lo >= 0  # a ReLU output: all 256 levels are positive
        a = entropy_amax(stats.abs_hist, stats.abs_edges, 2 * ENTROPY_TARGET_BINS if unsigned else ENTROPY_TARGET_BINS)
        lo, hi = max(lo, -a), min(hi, a)
    else:
        lo, hi = mse_range(stats, symmetric)
    if method in ("percentile", "entropy"):  # never clip a saturation spike (e.g. ReLU6's 6.0)
        low_spike, high_spike = saturated_ends(stats)
        hi = stats.real_max if high_spike else hi
        lo = stats.real_min if low_spike else lo
        if symmetric and (low_spike or high_spike):
            lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
    return min(lo, 0.0), max(hi, 0.0)


def qparams(lo: float, hi: float, *, symmetric: bool, method: str) -> QParams:
    """Scale and zero point covering [lo, hi]; asymmetric ranges keep zero exactly representable."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        amax = max(abs(lo), abs(hi), MIN_RANGE)
        return QParams(amax / QMAX, 0, "int8", -amax, amax, method)
    span = max(hi - lo, MIN_RANGE)
    scale = span / 255
    zero_point = int(np.clip(round(-lo / scale), 0, 255))
    return QParams(scale, zero_point, "uint8", lo, hi, method)


def weight_qmax(bits: int) -> int:
    """The largest stored weight: 127 for 8 bits (narrow range), 63 for 7 (see Quantization.weight_bits)."""
    return 2 ** (bits - 1) - 1


def weight_scales(weight: np.ndarray, axis: int, qmax: int = QMAX) -> np.ndarray:
    """Per-channel symmetric scales (narrow range ±qmax) of a weight along its output-channel axis."""
    reduce = tuple(a for a in range(weight.ndim) if a != axis)
    amax = np.abs(weight).max(axis=reduce) if reduce else np.abs(weight)
    return (np.maximum(amax, MIN_RANGE) / qmax).astype(np.float32)


def quantize_weight(weight: np.ndarray, scales: np.ndarray, axis: int, qmax: int = QMAX) -> np.ndarray:
    shape = [1] * weight.ndim
    shape[axis] = -1
    return np.clip(np.round(weight / scales.reshape(shape)), -qmax, qmax).astype(np.int8)
