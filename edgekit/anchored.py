"""Predicted latency anchored on published measurements, with the error bound its anchors can vouch for (issue 15).

The roofline (`edgekit.roofline`) is a floor: it knows the target's peak rate and bandwidth, not what a runtime
pays on top. Each target's `reference_latencies:` are published per-inference times of standard architectures
(`edgekit.reference_models`), so the runtime's real cost is fitted per target on them:

    ms = compute_slowdown × compute_ms + memory_slowdown × memory_ms

where compute_ms and memory_ms are the sums over the layers of the roofline's compute time (MACs at the peak
rate) and memory time (bytes at the bandwidth): an efficiency per kind of work, two free parameters, because 3 to
5 anchors cannot support more (a third term fitted on three anchors passes through them and leaves no error to
measure). A target whose anchors name fewer than 3 distinct models fits one slowdown of the whole roofline. Other
terms `fit` takes: a per-inference overhead (`overhead_ms`), one slowdown of the roofline (`slowdown`), a per-layer
overhead (`per_layer_ms` × compute layers); the host's bench (bench/anchors_host.py) found the two efficiencies
best of the 2-parameter forms (README, "Predicted latency"). The fit minimizes the relative error (least squares on
(predicted − published) / published, linear, solved exactly): anchors range from 0.6 to 420 ms, and an absolute
fit would let the slowest decide alone. No parameter is negative (a term that fits negative is dropped).
Measurements on the target's devices (edgekit.device_latencies) join the anchors, each weighing `MEASURED_WEIGHT`
anchors, and so join the leave-one-out error below.

Its error is leave-one-out: each anchor predicted by the fit on the others. The bound of a prediction is a factor
f (low = p50 / f, high = p50 × f): the largest leave-one-out error, as a ratio, at least `MIN_FACTOR`, for a model
inside the span of the anchors; the anchors vouch for no more than they span, so outside it f doubles
(`GROWTH_PER_DECADE`) per decade the model lies outside the anchors' roofline times (its size) plus per decade
outside their memory-to-compute ratios (its mix: a depthwise or attention model is memory-bound where a ResNet is
not). On the host (bench/anchors_host.py, 21 models outside a 3-anchor fit) that rule puts 95% of the measured
latencies inside their interval, where the leave-one-out factor alone put 52%; the rule's two constants were
chosen on those same models (81-100% over the neighbouring choices: README, "Predicted latency"). A target with
one anchor (no leave-one-out) gets `UNTESTED_FACTOR`, stated, not measured. A target with no anchors gets the
bare roofline, labelled so, with no bound: a floor, which can rule a budget out but never in (edgekit.budget).
No prediction goes below the runtime's published per-inference floor (the target's `latency_floor`): p50 is at
least the floor, and the bound keeps its factor above p50 (low never under the floor).

Fits are generated files shipped with the targets (`targets/fitted/<name>.json`, written by bench/fit_anchors.py:
exporting the reference models takes a minute); a target whose anchors or figures changed since is fitted on
first use instead (the fingerprint says so).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgekit import device_latencies
from edgekit.graph import Layer
from edgekit.latency import Latency
from edgekit.reference_models import reference_table
from edgekit.relative_fit import (
    COLUMNS,
    DEFAULT_TERMS,
    FEW_TERMS,
    MIN_FACTOR,
    UNTESTED_FACTOR,
    interval_factor,
    leave_one_out,
    model_ms,
    solve,
)
from edgekit.roofline import layer_costs
from edgekit.targets import LatencyFloor, ReferenceLatency, Target, load_target, shipped_dir
from edgekit.user_files import read_text
from edgekit.util import atomic_write_text

MIN_DISTINCT = 3  # distinct anchor models needed for 2 parameters
GROWTH_PER_DECADE = 2.0  # the bound's factor, per decade a model lies outside the anchors' size or mix
MEASURED_WEIGHT = 4.0  # a device measurement is this runtime on this device: it weighs as much as 4 anchors
RUNTIME_NAMES = {  # backend → how publications spell its runtime (lower case, spaces kept)
    "tensorrt": ("tensorrt",), "edgetpu": ("edge tpu", "edgetpu"), "tflite": ("tflite", "tensorflow lite", "litert"),
    "openvino": ("openvino",), "hls4ml": ("hls4ml",), "onnxruntime": ("onnx runtime", "onnxruntime"),
}


def features(layers: list[Layer], target: Target, precision: str,
             precisions: Mapping[str, str] | None = None) -> dict:
    """What the fit sees of a model on a target: its roofline time (and its compute and memory parts) and its
    compute layers (those with multiply-accumulates: what a runtime launches as kernels, activations fused).
    `precisions`: a per-layer plan (layer name → precision), `precision` for the layers it does not name."""
    of = precisions or {}
    by_precision: dict[str, list[Layer]] = {}
    for layer in layers:
        by_precision.setdefault(of.get(layer.name, precision), []).append(layer)
    costs = [c for p, group in by_precision.items() for c in layer_costs(group, target, p)]
    return {"roofline_ms": sum(c.ms for c in costs), "compute_ms": sum(c.compute_ms for c in costs),
            "memory_ms": sum(c.memory_ms for c in costs), "compute_layers": compute_layers(layers)}


@dataclass(frozen=True)
class Fit:
    """One target's fitted model, as stored in targets/fitted/<name>.json."""

    target: str
    fingerprint: str
    terms: tuple[str, ...]
    params: dict[str, float]
    anchors: tuple[dict, ...]  # used: model, input, precision, runtime, ms, how, features, fitted_ms
    skipped: tuple[dict, ...]  # model, input, value, unit, why
    loo_errors: tuple[float, ...]
    median_abs_loo: float | None
    interval_factor: float
    interval: str  # how the factor was obtained
    notes: tuple[str, ...] = field(default=())

    @property
    def free_parameters(self) -> int:
        return sum(1 for v in self.params.values() if v > 0)

    def as_dict(self) -> dict:
        return {**asdict(self), "free_parameters": self.free_parameters}

    @classmethod
    def from_dict(cls, data: dict) -> Fit:
        data = {k: v for k, v in data.items() if k != "free_parameters"}
        return cls(**{**data, "terms": tuple(data["terms"]), "anchors": tuple(data["anchors"]),
                      "skipped": tuple(data["skipped"]), "loo_errors": tuple(data["loo_errors"]),
                      "notes": tuple(data.get("notes", ()))})


# ---- a target's anchors ---------------------------------------------------------------------------------------
def _per_inference(ref: ReferenceLatency) -> tuple[float | None, str]:
    """(ms per inference, how it was read) or (None, why the figure is not one inference's latency)."""
    if ref.batch is not None and ref.batch > 1:
        return None, f"batch {ref.batch}: the time of a query of {ref.batch} samples, not of one inference"
    if ref.unit == "fps":
        if ref.batch is None:
            return None, "a throughput with batching unstated (an Offline scenario): not a per-inference latency"
        return 1e3 / ref.value, "1000 / fps: batch 1 and one stream, so one inference every 1/throughput"
    return ref.value, f"ms ({ref.which}{', batch unstated: taken as 1' if ref.batch is None else ''})"


def _runs_backend(ref: ReferenceLatency, backend: str) -> bool:
    return any(name in ref.runtime.lower() for name in RUNTIME_NAMES.get(backend, (backend,)))


def select(target: Target) -> tuple[list[tuple[ReferenceLatency, float, str]], list[dict]]:
    """The anchors a fit uses (each with its ms and how it was read) and those skipped, with why: figures that
    are not one inference's latency, and — where at least `MIN_DISTINCT` anchors ran the target's own backend —
    those of other runtimes (another runtime is another efficiency)."""
    used, skipped = [], []
    for ref in target.reference_latencies:
        ms, how = _per_inference(ref)
        if ms is None:
            skipped.append({"model": ref.model, "input": ref.input, "value": ref.value, "unit": ref.unit, "why": how})
        else:
            used.append((ref, ms, how))
    own = [u for u in used if _runs_backend(u[0], target.backend.name)]
    if len(own) >= MIN_DISTINCT and len(own) < len(used):
        for ref, _, _ in used:
            if not _runs_backend(ref, target.backend.name):
                skipped.append({"model": ref.model, "input": ref.input, "value": ref.value, "unit": ref.unit,
                                "why": f"runtime '{ref.runtime}' is not the target's backend ({target.backend.name}), "
                                       f"which {len(own)} anchors ran"})
        used = own
    return used, skipped


def fingerprint(target: Target) -> str:
    """What a fit depends on: the anchors and the figures the roofline reads."""
    facts = {"anchors": [r.model_dump() for r in target.reference_latencies], "peak_gops": target.peak_gops,
             "memory_bandwidth_gbs": target.memory_bandwidth_gbs, "backend": target.backend.name}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tables(keys: set[tuple[str, str]], work: Path) -> dict[tuple[str, str], list[Layer]]:
    return {key: reference_table(key[0], work / f"{key[0]}-{key[1]}", key[1]) for key in sorted(keys)}


def fit_target(target: Target, tables: dict[tuple[str, str], list[Layer]] | None = None) -> Fit | None:
    """The target's fit on its anchors (None without any usable). `tables`: reference layer tables by
    (model, input), exported here where missing."""
    used, skipped = select(target)
    if not used:
        return None
    tables = dict(tables or {})
    missing = {(r.model, r.input) for r, _, _ in used} - set(tables)
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            tables.update(_tables(missing, Path(tmp)))
    rows = [features(tables[(r.model, r.input)], target, r.precision) for r, _, _ in used]
    ms = [m for _, m, _ in used]
    distinct = len({(r.model, r.input) for r, _, _ in used})
    terms = DEFAULT_TERMS if distinct >= MIN_DISTINCT else FEW_TERMS
    params = solve(rows, ms, terms)
    loo = leave_one_out(rows, ms, terms) if len(used) > 1 else []
    anchors = tuple({"model": r.model, "input": r.input, "precision": r.precision, "runtime": r.runtime, "ms": m,
                     "how": how, "features": f, "fitted_ms": model_ms(params, f)}
                    for (r, m, how), f in zip(used, rows, strict=True))
    notes = [] if distinct >= MIN_DISTINCT else [
        f"{distinct} distinct anchor model(s): two efficiencies cannot be told apart, so one slowdown of the whole "
        f"roofline is fitted (1 parameter)"]
    if not any(_runs_backend(r, target.backend.name) for r, _, _ in used):
        notes.append(f"no anchor ran the target's backend ({target.backend.name}): the fit carries the published "
                     f"runtime's efficiency ({'; '.join(sorted({r.runtime for r, _, _ in used}))})")
    if len({r.precision for r, _, _ in used}) == 1:
        notes.append(f"anchors in {used[0][0].precision} only: other precisions get the same terms on their roofline")
    interval = (f"largest leave-one-out error over {len(loo)} anchors (at least {MIN_FACTOR})" if loo else
                f"stated, not measured: one anchor leaves nothing out (factor {UNTESTED_FACTOR})")
    return Fit(target.name, fingerprint(target), terms, params, anchors, tuple(skipped), tuple(loo),
               float(np.median(np.abs(loo))) if loo else None, interval_factor(loo), interval, tuple(notes))


# ---- stored fits and predictions ------------------------------------------------------------------------------
def fitted_dir() -> Path:
    """Where the generated fits ship: beside the targets, in fitted/."""
    return shipped_dir() / "fitted"


def save(fit: Fit, folder: Path) -> Path:
    path = Path(folder) / f"{fit.target}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(fit.as_dict(), indent=1) + "\n")
    return path


def load(path: Path) -> Fit:
    return Fit.from_dict(json.loads(read_text(path, "fitted latency model")))


_FITS: dict[tuple, Fit | None] = {}
_PUBLISHED: dict[tuple[str, str], Fit | None] = {}


def fit_for(target: Target) -> Fit | None:
    """The target's fit joined with its devices' measurements (`with_measurements`); None for a target with
    neither usable anchors nor measurements. Redone when the target's facts or the device files change."""
    key = (target.name, fingerprint(target), device_latencies.stamp())
    if key not in _FITS:
        _FITS[key] = with_measurements(_published(target), device_latencies.for_target(target))
    return _FITS[key]


def _published(target: Target) -> Fit | None:
    """The shipped fit when it was fitted on the target as it is now, else fitted here once per process (slow:
    the reference models are exported), or a kindred target's (`_borrowed`)."""
    key = (target.name, fingerprint(target))
    if key not in _PUBLISHED:
        shipped = fitted_dir() / f"{target.name}.json"
        fit = load(shipped) if shipped.is_file() else None
        if fit is None or fit.fingerprint != key[1]:
            fit = fit_target(target) if target.reference_latencies else _borrowed(target)
        _PUBLISHED[key] = fit
    return _PUBLISHED[key]


def with_measurements(fit: Fit | None, measured: list[dict]) -> Fit | None:
    """`fit` refitted on its anchors plus device measurements (edgekit.device_latencies), each weighing
    `MEASURED_WEIGHT` anchors, with a per-inference overhead term; its leave-one-out error, and so its bound,
    now over both."""
    if not measured:
        return fit
    rows = [*(fit.anchors if fit else ()), *({"model": m["model"], "input": "(measured)", "precision": m["precision"],
             "runtime": f"device {m['device']}", "ms": m["ms"], "features": m["features"], "measured": True,
             "how": f"measured on device {m['device']} through its agent, {m['when']}"} for m in measured)]
    weights = [MEASURED_WEIGHT if a.get("measured") else 1.0 for a in rows]
    feats, ms, base = [a["features"] for a in rows], [a["ms"] for a in rows], fit.terms if fit else FEW_TERMS
    # a measured model (often far smaller than any anchor) shows the per-inference cost the anchors cannot: a term
    # for it where the rows leave each leave-one-out fit as many rows as terms
    terms = ("overhead_ms", *base) if len(rows) >= len(base) + 2 and "overhead_ms" not in base else base
    params = solve(feats, ms, terms, weights)
    loo = leave_one_out(feats, ms, terms, weights) if len(rows) > 1 else []
    count = sum(1 for a in rows if a.get("measured"))
    interval = (f"largest leave-one-out error over {len(rows) - count} published anchors and {count} device "
                f"measurements (at least {MIN_FACTOR})" if loo else f"stated, not measured: one measurement leaves "
                f"nothing out (factor {UNTESTED_FACTOR})")
    return Fit(fit.target if fit else measured[0]["target"], fit.fingerprint if fit else "", terms, params,
               tuple({**a, "fitted_ms": model_ms(params, a["features"])} for a in rows), fit.skipped if fit else (),
               tuple(loo), float(np.median(np.abs(loo))) if loo else None, interval_factor(loo), interval,
               (*(fit.notes if fit else ()), f"{count} measurement(s) on the target's devices joined the fit, "
                f"each weighing {MEASURED_WEIGHT:g} published anchors"))


def _borrowed(target: Target) -> Fit | None:
    """A target without anchors of its own whose file names a kindred one (`reference_latencies_from`: the same
    runtime on a related device) takes that fit's efficiencies, applied to its own roofline; nothing published
    checks them on this device, so the bound is the lender's times `UNTESTED_FACTOR`, stated, not measured."""
    if not target.reference_latencies_from:
        return None
    lender = load_target(target.reference_latencies_from)
    fit = fit_for(lender)
    if fit is None:
        return None
    return dataclasses.replace(
        fit, interval_factor=fit.interval_factor * UNTESTED_FACTOR,  # still the lender's fit: its name, its anchors
        interval=(f"borrowed from {lender.name}: its factor {fit.interval_factor:.2f} x {UNTESTED_FACTOR} (stated, not "
                  f"measured: no published latency on {target.name} checks it)"),
        notes=(*fit.notes, f"no published anchors on {target.name}: the efficiencies fitted on {lender.name} "
                           f"({lender.device}) applied to {target.name}'s own roofline"))


def measured_count(fit: Fit) -> int:
    return sum(1 for a in fit.anchors if a.get("measured"))


def describe(fit: Fit) -> str:
    terms = " + ".join(f"{fit.params[t]:.4g}{COLUMNS[t][1]}" for t in fit.terms)
    error = "no leave-one-out error (one anchor)" if fit.median_abs_loo is None else \
        f"leave-one-out median error {fit.median_abs_loo:.0%} over {len(fit.loo_errors)}"
    borrowed = f" ({fit.interval})" if fit.interval.startswith(("borrowed", "stated")) else ""
    return f"{terms}; {error}; bound x/÷{fit.interval_factor:.2f} inside the anchors' span{borrowed}"


def _mix(feats: dict) -> float:
    return feats["memory_ms"] / max(feats["compute_ms"], 1e-12)


def _decades_outside(value: float, values: list[float]) -> float:
    low, high = min(values), max(values)
    return max(0.0, math.log10(low / value) if value < low else math.log10(value / high) if value > high else 0.0)


def outside(fit: Fit, feats: dict) -> float:
    """How far (in decades) a model lies outside the anchors: in size (roofline time) plus in mix (memory to
    compute time)."""
    anchors = [a["features"] for a in fit.anchors]
    if not anchors or feats["roofline_ms"] <= 0:
        return 0.0
    return (_decades_outside(feats["roofline_ms"], [a["roofline_ms"] for a in anchors])
            + _decades_outside(max(_mix(feats), 1e-12), [max(_mix(a), 1e-12) for a in anchors]))


def factor_for(fit: Fit, feats: dict) -> float:
    """The bound's factor for one model: the fit's, doubled per decade outside the anchors (module docstring)."""
    return fit.interval_factor * GROWTH_PER_DECADE ** outside(fit, feats)


def predict(layers: list[Layer], target: Target, precision: str = "fp32", fit: Fit | None = None,
            precisions: Mapping[str, str] | None = None) -> Latency:
    """The latency of a model (its layer table; `precisions` a per-layer plan) on a target, anchored on the
    target's published latencies (and its devices' measurements), with `low`/`high` from the leave-one-out error
    and how far the model lies outside the anchors; the bare roofline, labelled so and unbounded, without any;
    never below the runtime's floor."""
    fit = fit or fit_for(target)
    feats = features(layers, target, precision, precisions)
    plan = f"{precision}, per layer" if precisions else precision
    if fit is None:
        least = floor_ms(target, feats["compute_layers"])
        return Latency.predicted(max(feats["roofline_ms"], least), f"roofline of {target.name} ({plan}) only: no "
                                 f"published reference latencies anchor it, so no error bound (a floor, not an "
                                 f"estimate){_floor_words(target.latency_floor, feats['roofline_ms'], least, 1.0)}")
    return predict_from_features(feats, fit, plan, target.latency_floor)


def predict_from_features(feats: dict, fit: Fit, precision: str = "fp32", floor: LatencyFloor | None = None) -> Latency:
    """The fitted model on a model's features (`features`), bounded by the fit's factor for that model; p50 at
    least `floor` (the target's `latency_floor`), the bound keeping its factor above p50, low not under it."""
    value = model_ms(fit.params, feats)
    away = outside(fit, feats)
    factor = fit.interval_factor * GROWTH_PER_DECADE ** away  # factor_for, with `away` kept for the source
    least = floor.ms(feats["compute_layers"]) if floor is not None else 0.0
    p50 = max(value, least)
    where = f", {away:.1f} decades outside the anchors: x/÷{factor:.2f}" if away >= 0.05 else ""
    devices = sorted({a["runtime"] for a in fit.anchors if a.get("measured")})
    count = measured_count(fit)
    measured = f" and {count} device measurements ({', '.join(devices)})" if count else ""
    source = (f"anchored on {len(fit.anchors) - count} published latencies of {fit.target}{measured} ({precision}): "
              f"{describe(fit)}{where}{_floor_words(floor, value, least, factor)}")
    return Latency.predicted(p50, source, max(p50 / factor, least), p50 * factor)


def compute_layers(layers: list[Layer]) -> int:
    """The layers with multiply-accumulates: what a runtime launches as kernels, activations fused into them."""
    return sum(1 for x in layers if x.macs > 0)


def floor_ms(target: Target, compute_layers: int) -> float:
    """The least one inference of a model with `compute_layers` takes with the target's runtime (0 without a
    published floor)."""
    floor = target.latency_floor
    return floor.ms(compute_layers) if floor is not None else 0.0


def _floor_words(floor: LatencyFloor | None, value: float, least: float, factor: float) -> str:
    """Where the runtime's floor decided: the prediction itself (raised to it), or its low bound."""
    if floor is None or least <= value / factor:
        return ""
    decided = f"raised from {value:.4g} ms to" if value < least else "low bound at"
    return f"; {decided} the runtime's per-inference floor {least:.4g} ms ({floor.source})"


def layer_ms(layers: list[Layer], target: Target, precision: str, fit: Fit) -> float:
    """Some layers' share of the fitted model (it is a sum over layers): a lookup table's unit off the device."""
    return model_ms(fit.params, features(layers, target, precision))
