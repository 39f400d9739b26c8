"""Latency and memory of a candidate (a layer table and a precision per layer) on a target.

Three levels, each correcting the one before:

1. **Roofline** (`edgekit.roofline`): each layer takes the longer of its compute time
   at the target's peak rate for its precision and its memory time at the target's bandwidth. What a
   target that cannot run here gets.
2. **Lookup table** (`edgekit.latency_table.LatencyTable`): each execution unit (a layer and what
   the runtime fuses into it, `edgekit.fusion`) timed alone on the device with the target's runtime,
   once per distinct configuration, plus the runtime's measured per-inference and per-layer overheads.
3. **Calibration** (`CostModel.observe`): whole-model measurements fit
   measured ≈ a·Σ float unit times + a₈·Σ int8 unit times + b·units + e·tensors crossing int8↔float
   + d·their elements + c (least squares on relative errors, each coefficient at least its LOWER bound
   and held near the measured overheads by a weak prior),
   which absorbs what timing units alone cannot see: scheduling between kernels, cache effects,
   reorders where precisions change, and on a shared machine the difference between the load the
   table's reference was timed under and the load of the whole-model measurements. Float and int8
   units have a factor each: what a unit alone misses differs by precision and by CPU (on an AMD EPYC
   with AVX-512 VNNI the MobileNetV2-like's int8 units summed 0.37 ms alone and ran in 0.18 ms inside the
   model, its fp32 ones 0.34 and 0.30: one factor for both predicted the all-int8 model 73 % slow and
   the two candidates a search built 19 % and 9 % slow; on an AVX2 EPYC without VNNI the table made int8 16 % faster
   than fp32 where the model ran 6 % faster).
   The table keeps every model's observations; a cost model `scope`d to one model (a search's) fits
   that model's own on top of the fit to all (`scope_of`): what a model's kernels do between them is
   its own. The MobileNetV2-like at 96x96, after a transformer's and ResNets' searches had filled the
   table: built candidates missed by -17 % to -27 % on the fit to all, -2 % to -9 % on its own.
   A search measures on its anchor's scale (the original's p50 when it started, edgekit.search.anchor),
   which moves between searches on a shared machine (the same fp32 engine: 0.457 ms, then 0.600 ms seven
   minutes later), so each observation keeps its `scale_ms` and is rescaled to the current one: mixed
   unscaled, a second search's candidates were missed by -24 %.

`CostModel.error` and `CostModel.errors` report the model's error on every candidate measured.
Memory (`estimate_memory`): weights in each layer's precision plus the peak of live activations.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgekit import anchored, fusion
from edgekit.graph import Layer
from edgekit.latency import Latency
from edgekit.latency_table import LatencyTable
from edgekit.roofline import BYTES_PER_VALUE
from edgekit.targets import Target
from edgekit.util import sha256_bytes

MIN_OBSERVATIONS = 3  # below this the calibration is the measured overheads alone
MAX_OBSERVATIONS = 300  # the latest observations the calibration is fitted on
FEATURES = ("float_ms", "int8_ms", "units", "transitions", "transitions_m", "one")
# The prior (a=a₈=1, b=per-layer overhead, d=0, c=per-inference overhead): a coefficient PRIOR_SCALE
# away from it costs as much as PRIOR_WEIGHT observations missed by 100 %. Weak: it only settles what
# the observations leave open (e.g. b and c when every candidate has as many units).
# a and a₈ at 2, not 1: with a prior on each factor, 1 held a fit to observations made at a = 2 (tests)
# 11 % off a held-out candidate.
PRIOR_SCALE = {"float_ms": 2.0, "int8_ms": 2.0, "units": 0.05, "transitions": 0.05, "transitions_m": 0.5, "one": 0.5}
PRIOR_WEIGHT = 0.1
# Lower bounds: a model cannot run its kernels in much less than the time they take alone, so noisy
# observations (a loaded machine) must not fit a model in which the kernels' time counts for nothing
# (a = 0 makes every pruned candidate look as fast as the original, and the search stops pruning).
# int8 units are timed alone further from how they run in a model (the VNNI EPYC above: 0.49×), hence
# the lower bound of theirs.
LOWER = {"float_ms": 0.5, "int8_ms": 0.25, "units": 0.0, "transitions": 0.0, "transitions_m": 0.0, "one": 0.0}


# ---- the calibrated cost model ------------------------------------------------------------------


@dataclass(frozen=True)
class UnitCost:
    """One execution unit of a candidate: its layers, precision and table time."""

    name: str
    op: str
    layers: tuple[str, ...]
    precision: str
    ms: float


def _nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """min |a·x - y|² with x ≥ 0, exactly, by trying every support (a handful of columns)."""
    best, best_x = np.inf, np.zeros(a.shape[1])
    for size in range(a.shape[1] + 1):
        for support in itertools.combinations(range(a.shape[1]), size):
            x = np.zeros(a.shape[1])
            if support:
                x[list(support)] = np.linalg.lstsq(a[:, support], y, rcond=None)[0]
            if np.all(x >= 0):
                residual = float(np.sum((a @ x - y) ** 2))
                if residual < best - 1e-15:
                    best, best_x = residual, x
    return best_x


def scope_of(layers: list[Layer]) -> str:
    """The model a calibration is scoped to: its layers' ops and shapes, hashed (the same network whenever
    and however it is exported again, so a resumed search finds its observations)."""
    return sha256_bytes(";".join(f"{layer.op}{layer.input_shapes}{layer.output_shape}" for layer in layers).encode())[:16]


def fit_calibration(observations: list[dict], prior: np.ndarray, minimum: int = MIN_OBSERVATIONS) -> np.ndarray:
    """Coefficients of FEATURES from whole-model observations ({"features", "measured_ms"}):
    least squares on relative errors (a 10 % miss weighs the same on a small and a large model), each
    coefficient at least its LOWER bound and held near the prior by PRIOR_WEIGHT observations' worth
    per PRIOR_SCALE.
    Fewer than `minimum`: the prior itself. Only the latest MAX_OBSERVATIONS count: the table
    outlives a search, the runtime's behaviour between kernels may drift."""
    rows = [o for o in observations if o.get("measured_ms", 0) > 0 and all(f in o.get("features", {}) for f in FEATURES)]
    rows = rows[-MAX_OBSERVATIONS:]
    if len(rows) < minimum:
        return np.asarray(prior, dtype=float)
    x = np.array([[o["features"][f] for f in FEATURES] for o in rows])
    y = np.array([o["measured_ms"] for o in rows])
    scale = np.array([PRIOR_SCALE[f] for f in FEATURES]) / np.sqrt(PRIOR_WEIGHT)
    lower = np.array([LOWER[f] for f in FEATURES])
    a = np.vstack([x / y[:, None], np.diag(1 / scale)])
    target = np.concatenate([np.ones(len(y)), np.asarray(prior) / scale]) - a @ lower
    return lower + _nnls(a, target)  # solved for the excess over the lower bounds, which is ≥ 0


class CostModel:
    """Predicted latency of candidates on a target: table + calibration (or the roofline).

        model = CostModel(load_target("host"))                # openvino on the host: measures
        model.predict(layers, {"node_Conv_3": "int8"})          # Latency(kind="predicted", ...)
        model.observe(layers, plan, measured_ms, candidate="c7")  # returns its error, refits
        model.errors()                                          # every observed candidate's error
    """

    def __init__(self, target: Target, backend_name: str | None = None, *, table=None, runs: int = 100,
                 scope: str | None = None, scale_ms: float | None = None) -> None:
        self.target = target
        self.scope = scope  # scope_of the model searched: its observations are fitted on top of all
        self.scale_ms = scale_ms  # what measurements are relative to (the anchor's p50), if anything
        self.table = table or LatencyTable(target, backend_name, runs=runs)
        self._errors: list[dict] = []
        self.coefficients = self._fit()

    # ---- features of a candidate

    def breakdown(self, layers: list[Layer], precisions: Mapping[str, str] | None = None,
                  default: str = "fp32") -> list[UnitCost]:
        """Each unit's table time in its precision and its context in the model (the table measures
        what it has not seen yet)."""
        found = fusion.units(layers)
        return self._costs(found, fusion.unit_precisions(found, precisions, default))

    def _costs(self, found: list[fusion.Unit], precision_of: Mapping[str, str]) -> list[UnitCost]:
        context = fusion.contexts(found, precision_of)
        costs = []
        for unit in found:
            siblings, quantized_output, fed = context[unit.name]
            ms = self.table.unit_ms(unit, precision_of[unit.name], siblings, quantized_output=quantized_output, fed=fed)
            costs.append(UnitCost(unit.name, unit.head.op, tuple(layer.name for layer in unit.layers),
                                  precision_of[unit.name], ms))
        return costs

    def features(self, layers: list[Layer], precisions: Mapping[str, str] | None = None,
                 default: str = "fp32") -> dict[str, float]:
        """FEATURES of a candidate: its units' table times by precision, how many units run, the tensors
        crossing int8↔float (how many, their elements in millions), and 1."""
        found = fusion.units(layers)
        precision_of = fusion.unit_precisions(found, precisions, default)
        costs = self._costs(found, precision_of)
        crossings, elements = fusion.transitions(found, precision_of)
        return {"float_ms": sum(c.ms for c in costs if c.precision != "int8"),
                "int8_ms": sum(c.ms for c in costs if c.precision == "int8"),
                "units": float(sum(1 for c in costs if c.ms > 0)),
                "transitions": float(crossings), "transitions_m": elements / 1e6, "one": 1.0}

    # ---- calibration

    def prior(self) -> np.ndarray:
        """The calibration before any observation: a=a₈=1, the measured overheads, no transition cost."""
        overhead = self.table.overhead
        return np.array([1.0, 1.0, overhead["layer_ms"], 0.0, 0.0, overhead["inference_ms"]])

    def _own(self) -> list[dict]:
        """This model's observations, each on the current scale where both it and this model have one."""
        own = [o for o in self.table.observations if self.scope is not None and o.get("scope") == self.scope]
        return [{**o, "measured_ms": o["measured_ms"] * self.scale_ms / o["scale_ms"]}
                if self.scale_ms and o.get("scale_ms") else o for o in own]

    def _fit(self) -> np.ndarray:
        """The fit to every observation; scoped, this model's observations fitted with that as the prior."""
        shared = fit_calibration(self.table.observations, self.prior())
        own = self._own()
        return fit_calibration(own, shared, minimum=1) if own else shared

    @property
    def calibration(self) -> dict:
        n = min(len([o for o in self.table.observations if "features" in o]), MAX_OBSERVATIONS)
        return {"coefficients": dict(zip(FEATURES, (round(float(c), 6) for c in self.coefficients), strict=True)),
                "observations": n, "own_observations": len(self._own()), "fitted": n >= MIN_OBSERVATIONS}

    # ---- what callers use

    def predict_ms(self, layers: list[Layer], precisions: Mapping[str, str] | None = None,
                   default: str = "fp32") -> float:
        f = self.features(layers, precisions, default)
        return max(float(np.dot(self.coefficients, [f[k] for k in FEATURES])), self.floor_ms(layers))

    def predict(self, layers: list[Layer], precisions: Mapping[str, str] | None = None,
                default: str = "fp32") -> Latency:
        """The candidate's latency; off the device bounded as its anchored model is (`bound_factor`), its low
        bound not under the runtime's floor."""
        value = self.predict_ms(layers, precisions, default)
        factor = self.bound_factor(layers, precisions, default)
        least = self.floor_ms(layers)
        return Latency.predicted(value, self.source, *((max(value / factor, least), value * factor) if factor else ()))

    def floor_ms(self, layers: list[Layer]) -> float:
        """Off the device, the runtime's published per-inference floor (edgekit.anchored.floor_ms): nothing
        predicted is faster. On it, 0: the table's measurements say what the runtime costs."""
        return 0.0 if self.table.measured else anchored.floor_ms(self.target, anchored.compute_layers(layers))

    def bound_factor(self, layers: list[Layer], precisions: Mapping[str, str] | None = None,
                     default: str = "fp32") -> float | None:
        """Off the device, the factor of the prediction's bound (edgekit.anchored: the target's leave-one-out
        error, widened outside its anchors); None on a table measured on the device (a measurement judges
        there) and for a target without anchors (its roofline is a floor, with no bound)."""
        fit = None if self.table.measured else anchored.fit_for(self.target)
        if fit is None:
            return None
        return anchored.factor_for(fit, anchored.features(layers, self.target, default, precisions))

    @property
    def source(self) -> str:
        if not self.table.measured:
            return self.table.source
        calibration = self.calibration
        n, own = calibration["observations"], calibration["own_observations"]
        how = (f"calibration on {n} whole-model measurements" + (f", {own} of this model" if own else "")
               if n >= MIN_OBSERVATIONS or own else "measured runtime overheads (no whole-model calibration yet)")
        return f"{self.table.source} + {how}"

    def error(self, layers: list[Layer], precisions: Mapping[str, str] | None, measured_ms: float, *,
              default: str = "fp32", candidate: str | None = None) -> float:
        """The prediction's relative error on a measured candidate (predicted / measured - 1), recorded."""
        predicted = self.predict_ms(layers, precisions, default)
        record = {"candidate": candidate, "predicted_ms": round(predicted, 5), "measured_ms": round(measured_ms, 5),
                  "error": round(predicted / measured_ms - 1, 5)}
        self._errors.append(record)
        return record["error"]

    def observe(self, layers: list[Layer], precisions: Mapping[str, str] | None, measured_ms: float, *,
                default: str = "fp32", candidate: str | None = None) -> float:
        """Record a whole-model measurement (kept with the table) and refit the calibration. Returns
        the error of the prediction made before this measurement was known (recorded in errors())."""
        err = self.error(layers, precisions, measured_ms, default=default, candidate=candidate)
        self.table.add_observation({
            "candidate": candidate, "scope": self.scope, "scale_ms": self.scale_ms, "measured_ms": measured_ms, "predicted_ms": self._errors[-1]["predicted_ms"],
            "features": self.features(layers, precisions, default), "when": dt.datetime.now().isoformat(timespec="seconds")})
        self.coefficients = self._fit()
        return err

    def errors(self) -> list[dict]:
        """Every candidate this model was asked about: predicted, measured, relative error."""
        return list(self._errors)

    def mean_abs_error(self) -> float | None:
        return float(np.mean([abs(e["error"]) for e in self._errors])) if self._errors else None


# ---- memory ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    weights_mb: float
    peak_activations_mb: float

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.peak_activations_mb

    def fits(self, target: Target) -> bool:
        """Weights and peak activations within the target's RAM."""
        return self.total_mb <= target.ram_mb

    def as_dict(self) -> dict[str, float]:
        return {"weights_mb": self.weights_mb, "peak_activations_mb": self.peak_activations_mb, "total_mb": self.total_mb}


def estimate_memory(layers: list[Layer], precisions: Mapping[str, str] | None = None,
                    default: str = "fp32") -> MemoryEstimate:
    """Weights in each layer's precision (int8: int8 weights, int32 biases) plus the peak of the
    activations alive at once, walking the layers in order (a tensor lives from the layer that makes it
    to its last reader; a tensor every reader of which is int8 is stored in int8)."""
    found = fusion.units(layers)
    by_unit = fusion.unit_precisions(found, precisions, default)
    precision_of = {layer.name: by_unit[u.name] for u in found for layer in u.layers}
    floating = default if default != "int8" else "fp32"
    weights = 0.0
    for layer in layers:
        p = precision_of.get(layer.name, floating)
        if p == "int8" and layer.constants:
            for c in layer.constants:
                size = _numel(c.shape) if c.dtype else 0
                weights += size * (1 if c.index == 1 else 4)
        else:
            weights += layer.params * BYTES_PER_VALUE.get(p if p != "int8" else floating, 4)
    if not any(layer.outputs for layer in layers):  # a table without wiring: the largest single layer
        scale = BYTES_PER_VALUE.get(default, 4)
        peak = max((sum(_numel(s) for s in layer.input_shapes) + _numel(layer.output_shape) for layer in layers), default=0)
        return MemoryEstimate(weights / 2**20, peak * scale / 2**20)
    return MemoryEstimate(weights / 2**20, _peak_activations(layers, precision_of, floating) / 2**20)


def _peak_activations(layers: list[Layer], precision_of: dict[str, str], floating: str) -> float:
    size: dict[str, int] = {}
    readers: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        for t, s in zip(layer.inputs, layer.input_shapes, strict=False):
            size.setdefault(t, _numel(s))
            readers.setdefault(t, []).append(i)
        for t, s in zip(layer.outputs, layer.output_shapes or (layer.output_shape,), strict=False):
            size[t] = _numel(s)

    def nbytes(t: str) -> float:
        users = readers.get(t, [])
        int8 = users and all(precision_of.get(layers[i].name) == "int8" for i in users)
        return size[t] * (1 if int8 else BYTES_PER_VALUE.get(floating, 4))

    last = {t: max(users) for t, users in readers.items()}
    made = {t for layer in layers for t in layer.outputs}
    live = {t for t in readers if t not in made}  # the graph's inputs
    peak = sum(nbytes(t) for t in live)
    for i, layer in enumerate(layers):
        live |= set(layer.outputs)
        peak = max(peak, sum(nbytes(t) for t in live))
        live = {t for t in live if last.get(t, len(layers)) > i}  # outputs nobody reads stay: graph outputs
    return peak


def predict_memory_mb(layers: list[Layer], precision: str = "fp32", *,
                      precisions: Mapping[str, str] | None = None) -> dict[str, float]:
    """Weights plus the activations live at once: what must fit in the target's RAM."""
    return estimate_memory(layers, precisions, default=precision).as_dict()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= max(d, 1)
    return n
