"""Activation statistics over the calibration split.

ONNX Runtime runs the fp32 graph with every observed tensor made a graph output (as TensorRT's and
ONNX Runtime's calibrators see them), one sample at a time. Two passes: the first finds each tensor's
range, its magnitudes in decades (to spot sentinel values) and per-channel means (for bias
correction); the second fills fine histograms over the real range, from which every method derives
its clipping range without keeping the activations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.data import Samples
from edgekit.errors import BadInput, Failure, require, runtime_message

HIST_BINS = 2048  # as TensorRT's entropy calibrator
LOG_EDGES = np.arange(-12.0, 40.25, 0.25)  # log10|x| in quarter decades, 1e-12 … 1e40
SENTINEL_GAP_DECADES = 2.0  # an empty gap this wide splits a tensor's magnitudes in two clusters…
SENTINEL_MIN = 1e3  # …and the upper cluster starts at least here: a mask value, not an activation


@dataclass
class TensorStats:
    """What calibration knows about one tensor; histograms are counts over fixed edges."""

    name: str
    count: int = 0
    min: float = np.inf
    max: float = -np.inf
    nonfinite: int = 0
    log_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(LOG_EDGES) - 1, np.int64))
    channel_sum: np.ndarray | None = None  # per channel (axis 1; last axis for 3-D sequences)
    channel_count: int = 0
    real_bound: float | None = None  # |x| bound of the values that are not sentinels; None = no sentinel
    hist: np.ndarray | None = None  # signed, HIST_BINS over hist_edges
    hist_edges: np.ndarray | None = None
    abs_hist: np.ndarray | None = None  # |x|, HIST_BINS over abs_edges (0 … max|x| of real values)
    abs_edges: np.ndarray | None = None

    @property
    def sentinel(self) -> bool:
        return self.real_bound is not None

    @property
    def real_min(self) -> float:
        return float(self.hist_edges[0]) if self.hist_edges is not None else self.min

    @property
    def real_max(self) -> float:
        return float(self.hist_edges[-1]) if self.hist_edges is not None else self.max

    @property
    def channel_mean(self) -> np.ndarray | None:
        return None if self.channel_sum is None else self.channel_sum / max(self.channel_count, 1)


def _channel_axis(x: np.ndarray) -> int | None:
    """Channels are axis 1 of NCHW/NC tensors; a [B, T, C] sequence keeps them last."""
    if x.ndim == 4 or x.ndim == 2:
        return 1
    if x.ndim == 3:
        return 2
    return None


def _first_pass(stats: TensorStats, x: np.ndarray) -> None:
    finite = np.isfinite(x)
    bad = int(x.size - finite.sum())
    if bad:
        stats.nonfinite += bad
        x = x[finite]
    if x.size == 0:
        return
    stats.count += x.size
    stats.min, stats.max = min(stats.min, float(x.min())), max(stats.max, float(x.max()))
    magnitude = np.abs(x[x != 0])
    if magnitude.size:
        stats.log_hist += np.histogram(np.log10(magnitude), LOG_EDGES)[0]
    axis = _channel_axis(x) if not bad else None
    if axis is not None:
        sums = x.sum(axis=tuple(a for a in range(x.ndim) if a != axis), dtype=np.float64)
        stats.channel_sum = sums if stats.channel_sum is None else stats.channel_sum + sums
        stats.channel_count += x.size // x.shape[axis]


def find_sentinel(log_hist: np.ndarray) -> float | None:
    """The |x| bound of a tensor's real values when its magnitudes split in two clusters separated by
    an empty gap of ≥ SENTINEL_GAP_DECADES with the upper one ≥ SENTINEL_MIN (an additive attention
    mask of -1e4 … -3.4e38); None when the tensor has no such cluster."""
    filled = np.flatnonzero(log_hist)
    if filled.size < 2:
        return None
    gaps = np.diff(filled) - 1
    step = LOG_EDGES[1] - LOG_EDGES[0]
    for i in np.flatnonzero(gaps * step >= SENTINEL_GAP_DECADES):
        upper_start = 10 ** LOG_EDGES[filled[i + 1]]
        if upper_start >= SENTINEL_MIN:
            return float(10 ** LOG_EDGES[filled[i] + 1])
    return None


def _second_pass(stats: TensorStats, x: np.ndarray) -> None:
    x = x[np.isfinite(x)]
    if stats.real_bound is not None:
        x = x[np.abs(x) <= stats.real_bound]
    if x.size == 0:
        return
    stats.hist += np.histogram(x, stats.hist_edges)[0]
    stats.abs_hist += np.histogram(np.abs(x), stats.abs_edges)[0]


def _prepare_histograms(stats: TensorStats) -> None:
    stats.real_bound = find_sentinel(stats.log_hist)
    lo, hi = stats.min, stats.max
    if stats.real_bound is not None:
        lo, hi = max(lo, -stats.real_bound), min(hi, stats.real_bound)
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # the range always holds zero (exact zero point)
    if hi - lo <= 0:
        hi = lo + 1e-8
    stats.hist_edges = np.linspace(lo, hi, HIST_BINS + 1)
    stats.abs_edges = np.linspace(0.0, max(abs(lo), abs(hi)), HIST_BINS + 1)
    stats.hist = np.zeros(HIST_BINS, np.int64)
    stats.abs_hist = np.zeros(HIST_BINS, np.int64)


def float_tensors(model) -> dict[str, int]:
    """Every float tensor of the graph (inputs and node outputs) with its element type."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    initializers = {i.name for i in model.graph.initializer}
    return {name: t for name, t in types.items()
            if t == onnx.TensorProto.FLOAT and name not in initializers}


def _session_exposing(model, tensors: Iterable[str]):
    import onnx

    ort = require("onnxruntime", "onnxruntime")
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output} | {i.name for i in augmented.graph.input}
    for name in tensors:
        if name not in existing:
            augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # observe the graph as written
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise Failure(f"calibration could not run the model in ONNX Runtime: {runtime_message(err)}") from err


def collect(model, samples: Samples, tensors: Iterable[str] | None = None) -> dict[str, TensorStats]:
    """Statistics of `tensors` (default: every float activation) over `samples`; `model` is an
    onnx.ModelProto or a path to one."""
    import onnx

    if len(samples) == 0:
        raise BadInput(f"calibration data {samples.source} is empty")
    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    names = list(tensors) if tensors is not None else list(float_tensors(model))
    session = _session_exposing(model, names)
    index = {o.name: i for i, o in enumerate(session.get_outputs())}
    stats = {name: TensorStats(name) for name in names}
    feeds = [samples.sample(i) for i in range(len(samples))]
    for feed in feeds:
        outputs = session.run(None, feed)
        for name in names:
            _first_pass(stats[name], np.asarray(outputs[index[name]], dtype=np.float32) if name in index
                        else np.asarray(feed[name], np.float32))
    for s in stats.values():
        _prepare_histograms(s)
    for feed in feeds:
        outputs = session.run(None, feed)
        for name in names:
            _second_pass(stats[name], np.asarray(outputs[index[name]], dtype=np.float32) if name in index
                         else np.asarray(feed[name], np.float32))
    return stats


def channel_maxima(model, samples: Samples, tensors: list[str]) -> dict[str, np.ndarray]:
    """Per-channel maximum (axis 1) of each of `tensors` over `samples` (cross-layer equalization's clip rule)."""
    if not tensors:
        return {}
    session = _session_exposing(model, tensors)
    index = {o.name: i for i, o in enumerate(session.get_outputs())}
    maxima: dict[str, np.ndarray] = {}
    for i in range(len(samples)):
        outputs = session.run(None, samples.sample(i))
        for name in tensors:
            x = np.asarray(outputs[index[name]], np.float32)
            m = x.swapaxes(0, 1).reshape(x.shape[1], -1).max(axis=1)
            maxima[name] = m if name not in maxima else np.maximum(maxima[name], m)
    return maxima
