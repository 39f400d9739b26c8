"""The latency lookup table: each distinct unit configuration timed once on the device with the
target's own runtime, cached per target + runtime version.

A unit (a layer and what the runtime fuses into it, `edgekit.fusion`) is rebuilt alone
(`edgekit.microbench`), compiled with the target's runtime as its backend does, and its own time read
from the runtime's profiler: for OpenVINO the performance counters of every kernel that is the
unit's, summed per run, the lower quartile over N runs (a burst of other load on a shared machine
then does not stick in the table); for other backends their Engine's `layer_times` (ONNX Runtime's
profiler), the least of three rounds. The harness's own nodes (input dequantizers, output
quantizers, layout reorders at the model's edges: inside a model the neighbours agree on the
layout) are left out. The runtime's per-inference overhead (wall time minus profiled time of a tiny
model) and per-layer overhead (by difference between chains of 1 and 8 tiny layers) are measured
once too. Where the target cannot run here (not local, or its backend cannot run it) nothing is
measured: every figure comes from the roofline (`edgekit.roofline.layer_costs`) and says so.

The times are stored as profiled, not scaled by a reference model timed beside them (which this
table did until FORMAT 4): on a table begun while the machine was busy, the reference's own timing
moved by 0.37-1.13× between units whose raw times lay on one smooth curve (the 6-layer encoder's
larger matmuls ran at 81-90 G multiply-adds/s as profiled, 37-57 once scaled), and the scaled table
predicted that cutting its hidden width from 384 to 368 saves 22 % where it saves 1 % (measured).
The lower quartile already keeps a burst out; the whole-model calibration maps the table to
measured latencies.

The table is one JSON file, `cache_dir()/latency-tables/TARGET-RUNTIME-VERSION.json`, written
atomically and merged with what other processes wrote meanwhile. It also keeps the whole-model
observations the cost model calibrates on (`edgekit.cost.CostModel`).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from edgekit import anchored
from edgekit.backends.base import get_backend
from edgekit.errors import runtime_message
from edgekit.fusion import Unit
from edgekit.graph import Layer
from edgekit.measurer import LOCAL, Measurer
from edgekit.microbench import chain_model, unit_model
from edgekit.roofline import layer_costs
from edgekit.targets import Target
from edgekit.unit_timing import wait_for_quiet
from edgekit.util import cache_dir, write_json

FORMAT = 4  # bumped when what a key or an entry means changes: older tables are measured again (4: unscaled)
# Layout changes a runtime adds at a model's edges (OpenVINO's Reorder, ONNX Runtime's NCHWc reorders
# and the Transposes of its NHWC int8 kernels): inside a model the neighbours agree on the layout.
CHAIN = 8  # layers in the chain whose difference with one layer gives the per-layer overhead


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "-" for c in text)


def table_path(target: str, runtime: str, version: str) -> Path:
    """Where the table of a target + runtime version lives (characters a file name cannot hold become -)."""
    return cache_dir() / "latency-tables" / f"{_safe(target)}-{_safe(runtime)}-{_safe(version)}.json"


class LatencyTable:
    """Measured unit times for one target and runtime version, measured on first use and cached.

    `layer_ms(layer, precision)` and `unit_ms(unit, precision)` return milliseconds; `measured` says
    whether they come from the device or from the roofline (`source` says which in words)."""

    def __init__(self, target: Target, backend_name: str | None = None, *, runs: int = 100,
                 path: Path | None = None, quiet_s: float = 0.0, measurer: Measurer = LOCAL) -> None:
        self.target = target
        self.measurer = measurer  # where units are timed: here, or on a device through its agent
        self.backend_name = backend_name or target.backend.name
        self.runs = runs
        self.quiet_s = quiet_s  # before each measurement, wait up to this long for the machine to be quiet
        self.measurements = 0  # units and overheads timed by this object (the rest came from the cache)
        self.reason = ""
        self._backend = None
        try:
            backend = get_backend(self.backend_name)
            available = backend.available(target)
        except Exception as err:  # a backend edgekit does not have yet, or whose runtime is missing
            available, backend = None, None
            self.reason = str(err)
        versions = available.versions if available else {}
        found = next(iter(versions.items()), (self.backend_name, "unknown"))
        self.measured = measurer.times_units(target, available)
        if available is not None and not self.measured:
            self.reason = available.reason or "the device is not this machine"
        if self.measured:
            self._backend = backend
        # the runtime the units run on (an agent reports the device's); one table per device
        self.runtime, self.version = measurer.runtime(self.backend_name, found) if self.measured else found
        self.path = Path(path) if path else table_path(measurer.table_name(target), self.runtime, self.version)
        self._data = self._read()

    # ---- what callers use -------------------------------------------------------------------

    @property
    def source(self) -> str:
        if not self.measured:
            fit = anchored.fit_for(self.target)
            model = (f"anchored on {len(fit.anchors)} published latencies of {fit.target}" if fit else "roofline, no published anchor")
            return f"{model} for {self.target.name} (not measurable here: {self.reason})"
        entries = self._data["entries"].values()
        fallback = sum(1 for e in entries if e.get("roofline"))
        extra = f", {fallback} not measurable alone: roofline" if fallback else ""
        where = self.measurer.where(self.target)
        return (f"lookup table ({len(entries) - fallback} units measured on {where} with {self.runtime} "
                f"{self.version}{extra})")

    def layer_ms(self, layer: Layer, precision: str = "fp32") -> float:
        """One layer alone, as a unit of its own (nothing fused into it)."""
        return self.unit_ms(Unit(layer), precision)

    def unit_ms(self, unit: Unit, precision: str = "fp32", siblings: tuple[Layer, ...] = (), *,
                quantized_output: bool | None = None, fed: bool = False) -> float:
        """The unit's time in `precision`. Its context inside the model, which changes what the runtime
        runs: `siblings`, the other heads reading its input in the same precision (a runtime may
        rewrite a strided 1×1 convolution whose input nobody else reads); `quantized_output`, its
        readers are int8 (default: when it is); `fed`, a layer makes its input (not the model's input)."""
        if not self.measured:
            return self._roofline(unit, precision)
        quantized_output = precision == "int8" if quantized_output is None else quantized_output
        key = self.key(unit, precision, siblings, quantized_output=quantized_output, fed=fed)
        entry = self._data["entries"].get(key)
        if entry is None:
            entry = self._measure_unit(unit, precision, siblings, quantized_output, fed)
            self._data["entries"][key] = entry
            self.save()
        return float(entry["ms"])

    def key(self, unit: Unit, precision: str, siblings: tuple[Layer, ...] = (), *,
            quantized_output: bool | None = None, fed: bool = False) -> str:
        key = unit.key(precision)
        if siblings:
            key += " sib=" + ",".join(sorted(_signature(s) for s in siblings))
        if quantized_output if quantized_output is not None else precision == "int8":
            key += " >int8"
        return key + (" fed" if fed else "")

    @property
    def overhead(self) -> dict[str, float]:
        """{"inference_ms", "layer_ms"}: the runtime's cost outside the profiled kernels, per inference
        and per layer (0 for the roofline)."""
        if not self.measured:
            return {"inference_ms": 0.0, "layer_ms": 0.0}
        if not self._data.get("overhead"):
            self._data["overhead"] = self._measure_overhead()
            self.save()
        return self._data["overhead"]

    @property
    def entries(self) -> dict[str, dict]:
        return dict(self._data["entries"])

    @property
    def observations(self) -> list[dict]:
        return list(self._data["observations"])

    def add_observation(self, record: dict) -> None:
        self._data["observations"].append(record)
        self.save()

    # ---- the cache file ---------------------------------------------------------------------

    def _empty(self) -> dict:
        return {"format": FORMAT, "target": self.target.name, "device": self.target.device, "runtime": self.runtime,
                "version": self.version, "threads": self.target.cores, "runs": self.runs, "entries": {},
                "overhead": {}, "observations": []}

    def _read(self) -> dict:
        data = self._empty()
        if not self.measured or not self.path.is_file():
            return data
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return data  # a damaged cache is measured again
        same = all(stored.get(k) == data[k] for k in ("format", "device", "runtime", "version", "threads"))
        return {**data, **{k: stored.get(k, data[k]) for k in ("entries", "overhead", "observations")}} if same else data

    def save(self) -> None:
        """Write the table, merged with what another process may have written since it was read."""
        if not self.measured:
            return
        on_disk = self._read()
        seen = {json.dumps(o, sort_keys=True) for o in self._data["observations"]}
        extra = [o for o in on_disk["observations"] if json.dumps(o, sort_keys=True) not in seen]
        self._data["entries"] = {**on_disk["entries"], **self._data["entries"]}
        self._data["overhead"] = self._data["overhead"] or on_disk["overhead"]
        self._data["observations"] = extra + self._data["observations"]
        write_json(self.path, self._data)

    # ---- measuring --------------------------------------------------------------------------

    def _roofline(self, unit: Unit, precision: str) -> float:
        """A unit the table cannot time: off the device, its share of the target's model anchored on published
        latencies (edgekit.anchored) where the target has one, else (and for a unit the runtime cannot build
        alone) its roofline."""
        fit = None if self.measured else anchored.fit_for(self.target)
        if fit is not None:
            return anchored.layer_ms(list(unit.layers), self.target, precision, fit)
        return sum(c.ms for c in layer_costs(list(unit.layers), self.target, precision))

    def _profile(self, model, precision: str, wall: bool = False) -> tuple[float, float | None, list[str]]:
        """The unit's own profiled time (ms), the wall-clock p50 if asked, and the kernels that ran."""
        if self.quiet_s:
            wait_for_quiet(self.quiet_s)
        return self.measurer.unit(model, self.target, self._backend, precision, self.runs, wall)

    def _measure_unit(self, unit: Unit, precision: str, siblings: tuple[Layer, ...], quantized_output: bool,
                      fed: bool) -> dict:
        """Time the unit; one the runtime cannot build alone gets the roofline, said in the entry (and
        kept, so it is not tried again)."""
        self.measurements += 1
        try:
            model = unit_model(unit, precision, weight_bits=self.target.quantization.weight_bits, siblings=siblings,
                               quantized_output=quantized_output, fed=fed)
            ms, _, kernels = self._profile(model, precision)
        except Exception as err:  # an op or attribute the rebuild or the runtime does not take alone
            return {"ms": round(self._roofline(unit, precision), 6), "roofline": True,
                    "reason": f"{type(err).__name__}: {runtime_message(err)}"[:300]}
        return {"ms": round(ms, 5), "kernels": kernels,
                "measured_on": dt.date.today().isoformat()}

    def _measure_overhead(self) -> dict[str, float]:
        """Per inference: wall p50 minus profiled time of one tiny layer. Per layer: the growth of that
        gap from one tiny layer to a chain of CHAIN of them, per added layer."""
        gaps = []
        for depth in (1, CHAIN):
            profiled, wall_ms, _ = self._profile(chain_model(depth), "fp32", wall=True)
            gaps.append(max(wall_ms - profiled, 0.0))
        self.measurements += 1
        return {"inference_ms": round(gaps[0], 5), "layer_ms": round(max(gaps[1] - gaps[0], 0.0) / (CHAIN - 1), 5)}


def _signature(layer: Layer) -> str:
    kernel = "x".join(map(str, layer.attr("kernel_shape", ())))
    strides = "x".join(map(str, layer.attr("strides", ())))
    return f"{layer.op}{kernel}s{strides}g{layer.attr('group', 1)}"
