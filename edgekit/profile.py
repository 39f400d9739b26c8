"""The measurement harness, the same for every runtime: warm-up, timed repeats, percentiles,
per-layer times, memory, and accuracy against the test split and the source model.

Defaults follow trtexec and benchmark_app: warm up for at least 200 ms, then time at least 100
single-batch inferences and at least 1 s, whichever is longer; threads = the target's cores.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import psutil

from edgekit.backends.base import Engine, LayerTime
from edgekit.data import Samples
from edgekit.errors import BadInput, Failure
from edgekit.latency import Latency
from edgekit.metrics import Metric, stack_outputs


@dataclass(frozen=True)
class ProfileSettings:
    warmup: int = 10
    warmup_s: float = 0.2
    repeats: int = 100
    min_time_s: float = 1.0
    layer_runs: int = 20
    threads: int | None = None  # None: the target's cores

    def __post_init__(self) -> None:
        for name in ("warmup", "repeats", "layer_runs"):
            if getattr(self, name) < (1 if name == "repeats" else 0):
                raise BadInput(f"--{name.replace('_', '-')} must be {'positive' if name == 'repeats' else 'zero or more'}, got {getattr(self, name)}")
        if not (0 <= self.min_time_s < math.inf and 0 <= self.warmup_s < math.inf):
            raise BadInput(f"--duration is seconds, zero or more; got {self.min_time_s}")
        if self.threads is not None and self.threads < 1:
            raise BadInput(f"--threads must be positive, got {self.threads}")


@dataclass(frozen=True)
class Accuracy:
    samples: int
    test: float | None  # top-1 against labels
    reference: float | None  # the source model's top-1 on the same samples
    agreement: float | None  # top-1 agreement with the source model
    cosine: float  # mean cosine similarity of the first output with the source model's
    metric: dict | None = None  # the task metric (edgekit.metrics): name, unit, value, source, drop

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Profile:
    latency: Latency
    throughput_fps: float
    threads: int
    memory: dict[str, float]
    layers: list[LayerTime] = field(default_factory=list)
    accuracy: Accuracy | None = None


def _rss_mb() -> float:
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def _peak_rss_mb() -> float | None:
    """The process's high-water mark (Linux reports ru_maxrss in KiB); None where unavailable."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_engine(engine: Engine, feed: dict[str, np.ndarray], settings: ProfileSettings) -> list[float]:
    """Per-inference wall times in ms, after the warm-up."""
    deadline = time.perf_counter() + settings.warmup_s
    done = 0
    while done < settings.warmup or time.perf_counter() < deadline:
        engine.run(feed)
        done += 1
    times = []
    end = time.perf_counter() + settings.min_time_s
    while len(times) < settings.repeats or time.perf_counter() < end:
        start = time.perf_counter()
        engine.run(feed)
        times.append((time.perf_counter() - start) * 1e3)
    return times


# Rounds of a side-by-side timing. Short ones follow a shared machine's swings: on a 2-core VM, the same
# pair of engines (a pruned int8 MobileNetV2-like beside its fp32 original, 1 s each) timed 6 times gave
# median ratios 0.38-0.52 in 6 rounds of 170 ms, 0.40-0.42 in 24 rounds of 40 ms.
ROUNDS = 24


def time_interleaved(engines: dict[str, Engine], feed: dict[str, np.ndarray], settings: ProfileSettings,
                     rounds: int = ROUNDS) -> dict[str, list[float]]:
    """Per-inference wall times of several engines measured side by side (`time_rounds`, flattened)."""
    return {name: [t for slice_ in slices for t in slice_] for name, slices in time_rounds(engines, feed, settings, rounds).items()}


def time_rounds(engines: dict[str, Engine], feed: dict[str, np.ndarray], settings: ProfileSettings,
                rounds: int = ROUNDS) -> dict[str, list[list[float]]]:
    """Per-inference wall times of several engines measured side by side, one list per round: each is
    warmed up, then they take turns in `rounds` slices (the order reversed every round), each slice
    1/rounds of the settings' repeats and duration. Clock boost, thermal drift and other load then hit
    every engine alike, so their percentiles can be compared with each other."""
    for engine in engines.values():
        time_engine(engine, feed, replace(settings, repeats=1, min_time_s=0.0))
    part = replace(settings, warmup=0, warmup_s=0.0, repeats=max(1, -(-settings.repeats // rounds)),
                   min_time_s=settings.min_time_s / rounds)
    times: dict[str, list[list[float]]] = {name: [] for name in engines}
    order = list(engines)
    for _ in range(rounds):
        for name in order:
            times[name].append(time_engine(engines[name], feed, part))
        order.reverse()
    return times


def round_ratios(slices: list[list[float]], baseline: list[list[float]]) -> list[float]:
    """p50 of each round of one engine over the p50 of the same round of another (`time_rounds`):
    what drift does to both within a round divides out."""
    return [float(np.median(ours) / np.median(theirs)) for ours, theirs in zip(slices, baseline, strict=True)]


def side_by_side(name: str, engine: str, ours: list[list[float]], theirs: list[list[float]]) -> dict:
    """What a report says of an engine timed in rounds beside another (`time_rounds`): the other's p50
    and the per-round ratio of the two (median and range), which drift on the device does not move."""
    ratios = round_ratios(ours, theirs)
    return {"with": name, "engine": engine, "rounds": len(ratios),
            "p50_ms": float(np.median([t for s in theirs for t in s])),
            "ratio": float(np.median(ratios)), "ratio_range": [min(ratios), max(ratios)]}


def _top1(out: np.ndarray) -> int | None:
    flat = out.reshape(out.shape[0], -1) if out.ndim > 1 else out[None]
    return int(flat[0].argmax()) if flat.shape[-1] > 1 else None


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float(np.allclose(a, b))


def accuracy(engine: Engine, samples: Samples, reference: Callable[[dict], list[np.ndarray]],
             metric: Metric | None = None) -> Accuracy:
    """Engine vs labels and vs the source model, one sample at a time (batch 1, as deployed); with a
    `metric`, also that metric for the engine and for the source model on the same samples."""
    hits = ref_hits = agree = 0
    cosines = []
    classify = True
    engine_outputs: list[list[np.ndarray]] = []
    source_outputs: list[list[np.ndarray]] = []
    for i in range(len(samples)):
        feed = samples.sample(i)
        outs = [np.asarray(o) for o in engine.run(feed)]
        refs = [np.asarray(o) for o in reference(feed)]
        ours, ref = outs[0], refs[0]
        if not all(np.all(np.isfinite(o)) for o in outs if o.dtype.kind == "f"):
            raise Failure(f"the engine produced NaN/Inf on test sample {i}")
        if metric is not None:
            engine_outputs.append(outs)
            source_outputs.append(refs)
        cosines.append(_cosine(ours, ref))
        a, b = _top1(ours), _top1(ref)
        if a is None:
            classify = False
            continue
        agree += a == b
        if samples.labels is not None:
            label = int(np.asarray(samples.labels[i]).ravel()[0])
            hits += a == label
            ref_hits += b == label
    n = len(samples)
    labelled = classify and samples.labels is not None and np.asarray(samples.labels).reshape(n, -1).shape[1] == 1
    judged = None
    if metric is not None:
        judged = metric_on(metric, engine_outputs, source_outputs, samples.labels)
    return Accuracy(
        samples=n,
        test=hits / n if labelled else None,
        reference=ref_hits / n if labelled else None,
        agreement=agree / n if classify else None,
        cosine=float(np.mean(cosines)),
        metric=judged,
    )


def metric_on(metric: Metric, engine_outputs: list[list[np.ndarray]], source_outputs: list[list[np.ndarray]],
              labels: np.ndarray | None) -> dict:
    """The metric for an engine and for the source model on the same samples, and the drop between them."""
    ours, theirs = stack_outputs(engine_outputs), stack_outputs(source_outputs)
    value = metric(ours, labels, theirs)
    source = metric(theirs, labels, theirs)
    return {**metric.describe(), "value": value, "source": source, "drop": round(metric.drop(source, value), 6)}


@dataclass(frozen=True)
class AccuracyCheck:
    """What `profile_engine` judges an engine's accuracy by (see `accuracy`): the test samples, the
    source model's outputs for a feed, and the task metric if one is named. One is no use without the other."""

    test: Samples
    reference: Callable[[dict], list[np.ndarray]]
    metric: Metric | None = None


def profile_engine(load: Callable[[], Engine], feed: dict[str, np.ndarray], settings: ProfileSettings, *,
                   threads: int, source: str, check: AccuracyCheck | None = None,
                   times: list[float] | None = None) -> Profile:
    """Load an engine and measure it: latency, per-layer times, memory, and accuracy if `check` is given.
    `times`: inference times already measured side by side with another engine (`time_interleaved`):
    the latency is then those, the very numbers a choice between the two was made on."""
    rss_before = _rss_mb()
    engine = load()
    engine.run(feed)
    rss_loaded = _rss_mb()
    times = times if times is not None else time_engine(engine, feed, settings)
    latency = Latency.from_samples(times, source)
    layers = engine.layer_times(feed, settings.layer_runs) if settings.layer_runs else []
    acc = accuracy(engine, check.test, check.reference, check.metric) if check is not None else None
    memory = {"engine_rss_mb": round(max(rss_loaded - rss_before, 0.0), 2), "process_rss_mb": round(_rss_mb(), 1)}
    peak = _peak_rss_mb()
    if peak is not None:
        memory["process_peak_rss_mb"] = round(peak, 1)
    return Profile(latency, 1e3 / latency.mean, threads, memory, layers, acc)


def verify_precision(engine: Engine, feed: dict, planned: dict[str, str]) -> dict:
    """What the runtime really executes for each planned layer, and every layer where that differs."""
    executed = engine.executed(feed, list(planned))
    mismatches = {layer: {"planned": planned[layer], "executed": executed[layer].precision}
                  for layer in planned if layer in executed and executed[layer].precision != planned[layer]}
    return {"executed": {layer: e.precision for layer, e in executed.items()},
            "kernels": {layer: e.exec_type for layer, e in executed.items()},
            "mismatches": mismatches,
            # fused into a runtime op that no longer names them (e.g. OpenVINO's attention subgraph)
            "unverified": [layer for layer in planned if layer not in executed]}
