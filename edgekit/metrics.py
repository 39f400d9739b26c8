"""Task metrics: what "accuracy" means for this model, the one measure every accuracy decision uses.

Top-1 means nothing for an embedding, an OCR sequence or a detection map. A metric takes the outputs
of a split (every model output, stacked over the samples: `[N, *output shape without batch]`), the
labels when the data has any, and the source model's outputs on the same samples, and returns one
number, higher is better. Built in:

- `top1`: top-1 accuracy against the labels (fraction);
- `agreement`: top-1 agreement with the source model (fraction; per position for sequences [N, T, C],
  per pixel along the channels for maps [N, C, H, W]);
- `cosine`: mean cosine similarity of each sample's first output with the source model's (embeddings);
- `rel-mse`: 1 − relative squared error of the first output against the source's (dense outputs);
- `psnr`: peak signal-to-noise ratio of the first output against the source's, in dB, the peak being
  the source outputs' largest magnitude (dense outputs; capped at 100 dB for identical outputs).

A user's metric is `package.module:function` with that signature; it may carry `unit` (a string) and
`points` (how many "points" one unit of the metric is worth, for `--max-accuracy-drop`) attributes.
A drop is `(source value − value) × points`: percentage points for the fractions, dB for psnr.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from edgekit import graph
from edgekit.errors import BadInput
from edgekit.util import import_object

MetricFn = Callable[[list[np.ndarray], "np.ndarray | None", "list[np.ndarray] | None"], float]
PSNR_CAP_DB = 100.0


def _class_axis(output: np.ndarray) -> int:
    return 1 if output.ndim == 4 else -1


def _labels_1d(labels: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(labels).reshape(n, -1)[:, 0].astype(np.int64)


def top1(outputs, labels, reference) -> float:
    out = np.asarray(outputs[0])
    return float((out.reshape(len(out), -1).argmax(1) == _labels_1d(labels, len(out))).mean())


def agreement(outputs, labels, reference) -> float:
    ours, ref = np.asarray(outputs[0]), np.asarray(reference[0])
    axis = _class_axis(ours)
    return float((ours.argmax(axis) == ref.argmax(axis)).mean())


def cosine(outputs, labels, reference) -> float:
    ours = np.asarray(outputs[0], np.float64).reshape(len(outputs[0]), -1)
    ref = np.asarray(reference[0], np.float64).reshape(len(reference[0]), -1)
    norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1)
    dots = (ours * ref).sum(1)
    same = np.all(np.isclose(ours, ref), axis=1)
    return float(np.mean(np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), same.astype(np.float64))))


def rel_mse(outputs, labels, reference) -> float:
    ours, ref = np.asarray(outputs[0], np.float64), np.asarray(reference[0], np.float64)
    return float(1.0 - ((ours - ref) ** 2).sum() / max(float((ref ** 2).sum()), 1e-30))


def psnr(outputs, labels, reference) -> float:
    ours, ref = np.asarray(outputs[0], np.float64), np.asarray(reference[0], np.float64)
    mse = float(((ours - ref) ** 2).mean())
    peak = float(np.abs(ref).max(initial=0.0))
    if mse == 0 or peak == 0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(peak * peak / mse))


@dataclass(frozen=True)
class Metric:
    """A named quality measure, higher is better, with its unit and how a drop in it is counted."""

    name: str
    unit: str
    points: float  # a drop of one unit is worth this many points (100: fractions in percentage points)
    fn: MetricFn
    needs_labels: bool = False
    against_source: bool = True  # compares with the source model's outputs (its own value is the best)
    why: str = ""  # why this metric (the default says what in the data chose it)

    def __call__(self, outputs: list[np.ndarray], labels: np.ndarray | None,
                 reference: list[np.ndarray] | None) -> float:
        """The metric on a split; a user's metric that raises or returns no finite number is a bad input."""
        if self.needs_labels and labels is None:
            raise BadInput(f"metric {self.name} needs labels; the data has none (use agreement, cosine, rel-mse or psnr)")
        try:
            value = self.fn(list(outputs), labels, None if reference is None else list(reference))
        except BadInput:
            raise
        except Exception as err:  # the user's code: any failure is said in one line
            raise BadInput(f"metric {self.name} raised {type(err).__name__}: {err}") from err
        try:
            number = float(value)
        except (TypeError, ValueError) as err:
            raise BadInput(f"metric {self.name} returned {type(value).__name__}, not a number") from err
        if not math.isfinite(number):
            raise BadInput(f"metric {self.name} returned {number}: a metric returns one finite number")
        return number

    def drop(self, source: float, value: float) -> float:
        """How far `value` is below the source model's, in points (see the module's docstring)."""
        return (source - value) * self.points

    def floor(self, source: float, max_drop: float) -> float:
        """The lowest value within `max_drop` points of the source model's."""
        if self.name == "psnr":
            raise BadInput("psnr is unbounded for the source model (its outputs are its own reference): a drop in dB "
                           "from it means nothing; judge a budget with rel-mse or cosine, or your own metric")
        return source - max_drop / self.points

    def describe(self) -> dict:
        return {"name": self.name, "unit": self.unit, "points_per_unit": self.points, "higher_is_better": True,
                **({"why": self.why} if self.why else {})}


BUILT_IN = {
    "top1": Metric("top1", "top-1 accuracy (fraction)", 100.0, top1, needs_labels=True, against_source=False),
    "agreement": Metric("agreement", "top-1 agreement with the source model (fraction)", 100.0, agreement),
    "cosine": Metric("cosine", "mean cosine similarity with the source model", 100.0, cosine),
    "rel-mse": Metric("rel-mse", "1 − squared error / the source output's squares", 100.0, rel_mse),
    "psnr": Metric("psnr", "dB against the source model's outputs", 1.0, psnr),
}


def load_metric(spec: str) -> Metric:
    """A built-in metric by name, or a user's `package.module:function`."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    if ":" not in spec:
        raise BadInput(f"unknown metric '{spec}' (built in: {', '.join(BUILT_IN)}; or package.module:function)")
    fn = import_object(spec, "metric")
    points = getattr(fn, "points", 1.0)
    if not isinstance(points, (int, float)) or not points > 0:
        raise BadInput(f"metric {spec}: its 'points' attribute must be a positive number, got {points!r}")
    return Metric(spec, str(getattr(fn, "unit", "the metric's own unit")), float(points), fn,
                  against_source=False)


def choose_metric(asked: str | None, labels: np.ndarray | None, outputs: list[np.ndarray]) -> Metric:
    """The metric asked for, else one chosen from the data: labels, one per sample, on a class vector →
    top1; else by the first output's kind: a class vector or a distribution over the last axis →
    agreement; a map [N, C, H, W] → rel-mse; anything else (embeddings, sequences of features) → cosine."""
    if asked:
        return load_metric(asked)
    first = np.asarray(outputs[0])
    per_sample = first.shape[1:] if first.ndim else ()
    shown = f"[1, {', '.join(map(str, per_sample))}]"
    one_label = labels is not None and np.asarray(labels).reshape(len(labels), -1).shape[1] == 1
    classes = len(per_sample) == 1 and per_sample[0] > 1
    if one_label and classes:
        return _because("top1", f"the data has labels and the output {shown} is a class vector")
    sums = first.sum(-1) if first.ndim >= 2 else None
    distribution = sums is not None and first.shape[-1] > 1 and bool(np.all(first >= 0)) and bool(np.allclose(sums, 1, atol=1e-3))
    if classes or (len(per_sample) == 2 and distribution):
        return _because("agreement", f"no labels fit; the output {shown} is a class vector or distribution")
    if len(per_sample) == 3:
        return _because("rel-mse", f"no labels fit; the output {shown} is a map")
    return _because("cosine", f"no labels fit; the output {shown} is a feature vector or sequence")


def _because(name: str, why: str) -> Metric:
    return replace(BUILT_IN[name], why=f"default: {why}")


def stack_outputs(per_sample: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per-sample output lists (batch 1 each) → one array per output, [N, *shape without batch]."""
    return [np.concatenate([outs[k] for outs in per_sample]) for k in range(len(per_sample[0]))]


def task_metric(asked: str | None, model, splits) -> Metric | None:
    """The metric asked for, else the default the data suggests (`choose_metric`), for a loaded model and
    its splits; tried once on the source model's outputs for up to 8 calibration samples, so that a user's
    metric that fails, fails before the build. None without data."""
    if splits is None:
        if asked:
            raise BadInput(f"--metric {asked} needs data to be measured on: pass --data")
        return None
    calibration = splits.calibration
    outputs = [graph.reference_outputs(model, calibration.sample(i)) for i in range(min(len(calibration), 8))]
    metric = choose_metric(asked, calibration.labels, outputs[0])
    stacked = stack_outputs(outputs)
    metric(stacked, None if calibration.labels is None else calibration.labels[: len(outputs)], stacked)
    return metric
