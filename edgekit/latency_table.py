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

On a shared machine the load changes while the table fills, so a unit timed under a burst would
look slower than its neighbours forever: before each unit (at most every REFERENCE_TTL_S) a fixed
reference model is timed too, and the unit's time is divided by how much slower the reference runs
now than when the table was begun (`load` in the entry). Every entry is then in the units of one
machine state; the whole-model calibration maps that state to the measured latencies.

The table is one JSON file, `cache_dir()/latency-tables/TARGET-RUNTIME-VERSION.json`, written
atomically and merged with what other processes wrote meanwhile. It also keeps the whole-model
observations the cost model calibrates on (`edgekit.cost.CostModel`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
from pathlib import Path

import numpy as np

from edgekit.fusion import Unit
from edgekit.graph import Layer
from edgekit.microbench import HARNESS, chain_model, reference_model, unit_model
from edgekit.roofline import layer_costs
from edgekit.targets import Target
from edgekit.util import cache_dir, write_json

FORMAT = 3  # bumped when what a key means changes: older tables are measured again
# Layout changes a runtime adds at a model's edges (OpenVINO's Reorder, ONNX Runtime's NCHWc reorders
# and the Transposes of its NHWC int8 kernels): inside a model the neighbours agree on the layout.
HARNESS_OPS = ("Parameter", "Result", "Reorder", "ReorderInput", "ReorderOutput", "Transpose")
ROUNDS = 3  # through an Engine: profiled in this many rounds of runs/ROUNDS inferences, the least kept
WARMUP = 10
QUANTILE = 0.25  # of the per-run profiled totals
CHAIN = 8  # layers in the chain whose difference with one layer gives the per-layer overhead
REFERENCE_TTL_S = 5.0  # a reference timing this recent stands for the machine's load now
LOAD_BOUNDS = (0.25, 4.0)  # a load factor outside these is a measurement gone wrong, not load


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "-" for c in text)


def table_path(target: str, runtime: str, version: str) -> Path:
    """Where the table of a target + runtime version lives (characters a file name cannot hold become -)."""
    return cache_dir() / "latency-tables" / f"{_safe(target)}-{_safe(runtime)}-{_safe(version)}.json"


# backend → the package whose version an agent reports for it (edgekit.agent.info.RUNTIMES)
RUNTIME_OF = {"openvino": "openvino", "onnxruntime": "onnxruntime", "tflite": "ai-edge-litert",
              "edgetpu": "ai-edge-litert", "tensorrt": "tensorrt", "hls4ml": "hls4ml"}


class LatencyTable:
    """Measured unit times for one target and runtime version, measured on first use and cached.

    `layer_ms(layer, precision)` and `unit_ms(unit, precision)` return milliseconds; `measured` says
    whether they come from the device or from the roofline (`source` says which in words)."""

    def __init__(self, target: Target, backend_name: str | None = None, *, runs: int = 100,
                 path: Path | None = None, quiet_s: float = 0.0, device=None) -> None:
        from edgekit.backends.base import get_backend

        self.target = target
        self.device = device  # edgekit.devices.Device: units are timed there, through its agent
        self.backend_name = backend_name or target.backend.name
        self.runs = runs
        self.quiet_s = quiet_s  # before each measurement, wait up to this long for the machine to be quiet
        self.measurements = 0  # units and overheads timed by this object (the rest came from the cache)
        self._load: tuple[float, float] | None = None  # (factor, when) of the latest reference timing
        self.reason = ""
        self._backend = None
        try:
            backend = get_backend(self.backend_name)
            available = backend.available(target)
        except Exception as err:  # a backend edgekit does not have yet, or whose runtime is missing
            available, backend = None, None
            self.reason = str(err)
        versions = available.versions if available else {}
        self.runtime, self.version = next(iter(versions.items()), (self.backend_name, "unknown"))
        self.measured = bool(available and available.run and target.local)
        if available is not None and not self.measured:
            self.reason = available.reason or "the device is not this machine"
        if self.measured:
            self._backend = backend
        where = target.name
        if device is not None:  # the device's runtime, as its agent reports it; one table per device
            with device.client() as client:
                found = client.info().get("runtimes", {})
            self.runtime = RUNTIME_OF.get(self.backend_name, self.backend_name)
            self.version = found.get(self.runtime, "unknown")
            self.measured, self.reason, where = True, "", f"{device.name}-{target.name}"
        self.path = Path(path) if path else table_path(where, self.runtime, self.version)
        self._data = self._read()

    # ---- what callers use -------------------------------------------------------------------

    @property
    def source(self) -> str:
        if not self.measured:
            return f"roofline of {self.target.name} (not measurable here: {self.reason})"
        entries = self._data["entries"].values()
        fallback = sum(1 for e in entries if e.get("roofline"))
        extra = f", {fallback} not measurable alone: roofline" if fallback else ""
        where = f"device {self.device.name} ({self.target.name}) through its agent" if self.device else self.target.name
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
                "overhead": {}, "reference": {}, "observations": []}

    def _read(self) -> dict:
        data = self._empty()
        if not self.measured or not self.path.is_file():
            return data
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return data  # a damaged cache is measured again
        same = all(stored.get(k) == data[k] for k in ("format", "device", "runtime", "version", "threads"))
        return {**data, **{k: stored.get(k, data[k]) for k in ("entries", "overhead", "reference", "observations")}} if same else data

    def save(self) -> None:
        """Write the table, merged with what another process may have written since it was read."""
        if not self.measured:
            return
        on_disk = self._read()
        seen = {json.dumps(o, sort_keys=True) for o in self._data["observations"]}
        extra = [o for o in on_disk["observations"] if json.dumps(o, sort_keys=True) not in seen]
        self._data["entries"] = {**on_disk["entries"], **self._data["entries"]}
        self._data["overhead"] = self._data["overhead"] or on_disk["overhead"]
        self._data["reference"] = on_disk["reference"] or self._data["reference"]  # the first one begun stands
        self._data["observations"] = extra + self._data["observations"]
        write_json(self.path, self._data)

    # ---- measuring --------------------------------------------------------------------------

    def _roofline(self, unit: Unit, precision: str) -> float:
        return sum(c.ms for c in layer_costs(list(unit.layers), self.target, precision))

    def _profile(self, model, precision: str, wall: bool = False) -> tuple[float, float | None, list[str]]:
        """The unit's own profiled time (ms), the wall-clock p50 if asked, and the kernels that ran."""
        if self.quiet_s:
            wait_for_quiet(self.quiet_s)
        if self.device is not None:
            return self._profile_on_device(model, precision, wall)
        return profile_unit(model, self.target, self._backend, precision, self.runs, wall)

    def _profile_on_device(self, model, precision: str, wall: bool) -> tuple[float, float | None, list[str]]:
        """The unit timed by the device's agent (a `unit` job), as this machine would time it here."""
        import onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "unit.onnx"
            onnx.save(model, str(path))
            with self.device.client() as client:
                job = client.submit({"kind": "unit", "target": self.target.name, "artifact": path.name,
                                     "precision": precision, "wall": wall, "settings": {"repeats": self.runs}},
                                    {path.name: path})
                result = client.wait(job)["result"]
        return result["ms"], result["wall_ms"], result["kernels"]

    def _measure_unit(self, unit: Unit, precision: str, siblings: tuple[Layer, ...], quantized_output: bool,
                      fed: bool) -> dict:
        """Time the unit; one the runtime cannot build alone gets the roofline, said in the entry (and
        kept, so it is not tried again)."""
        self.measurements += 1
        try:
            model = unit_model(unit, precision, weight_bits=self.target.quantization.weight_bits, siblings=siblings,
                               quantized_output=quantized_output, fed=fed)
            load = self.load_factor()
            ms, _, kernels = self._profile(model, precision)
        except Exception as err:  # an op or attribute the rebuild or the runtime does not take alone
            from edgekit.errors import runtime_message

            return {"ms": round(self._roofline(unit, precision), 6), "roofline": True,
                    "reason": f"{type(err).__name__}: {runtime_message(err)}"[:300]}
        return {"ms": round(ms / load, 5), "load": round(load, 4), "kernels": kernels,
                "measured_on": dt.date.today().isoformat()}

    def load_factor(self) -> float:
        """How much slower the reference model runs now than when the table was begun (1.0 for the
        first timing, which becomes the table's reference)."""
        import time

        if self._load is not None and time.monotonic() - self._load[1] < REFERENCE_TTL_S:
            return self._load[0]
        ms, _, _ = self._profile(reference_model(), "fp32")
        base = self._data["reference"].get("ms")
        if not base:
            self._data["reference"] = {"ms": round(ms, 6), "measured_on": dt.datetime.now().isoformat(timespec="seconds")}
            base = ms
        factor = float(np.clip(ms / base, *LOAD_BOUNDS))
        self._load = (factor, time.monotonic())
        return factor

    def _measure_overhead(self) -> dict[str, float]:
        """Per inference: wall p50 minus profiled time of one tiny layer. Per layer: the growth of that
        gap from one tiny layer to a chain of CHAIN of them, per added layer."""
        gaps = []
        for depth in (1, CHAIN):
            profiled, wall_ms, _ = self._profile(chain_model(depth), "fp32", wall=True)
            gaps.append(max(wall_ms - profiled, 0.0))
        self.measurements += 1
        return {"inference_ms": round(gaps[0], 5), "layer_ms": round(max(gaps[1] - gaps[0], 0.0) / (CHAIN - 1), 5)}


def profile_unit(model, target: Target, backend, precision: str, runs: int, wall: bool = False) -> tuple[float, float | None, list[str]]:
    """The unit's own profiled time (ms), the wall-clock p50 if asked, and the kernels that ran, on this
    machine: the runtime's own profiler where edgekit has one (PROFILERS), else through the Engine."""
    names = frozenset(n.name for n in model.graph.node if not n.name.startswith(HARNESS))
    profiler = PROFILERS.get(backend.name)
    if profiler is not None:
        return profiler(model, target, precision, runs, wall, names)
    return _profile_engine(model, target, backend, precision, runs, wall, names)


def _profile_engine(model, target: Target, backend, precision: str, runs: int, wall: bool,
                    names: frozenset[str]) -> tuple[float, float | None, list[str]]:
    """Any backend, through its Engine: per-kernel medians (`layer_times`), the least of ROUNDS rounds."""
    import onnx

    from edgekit.plan import PrecisionPlan
    from edgekit.profile import ProfileSettings, time_engine

    feed = _feed(model)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "unit.onnx"
        onnx.save(model, str(onnx_path))
        artifact = backend.build(onnx_path=onnx_path, plan=PrecisionPlan(precision), target=target, out_dir=Path(tmp))
        engine = backend.load(artifact, target=target, threads=target.cores)
        rounds = []
        for _ in range(ROUNDS):
            own = [t for t in engine.layer_times(feed, max(1, runs // ROUNDS)) if _own(t.name, t.op, names)]
            rounds.append((sum(t.time_ms for t in own), own))
        wall_ms = None
        if wall:
            settings = ProfileSettings(warmup=20, warmup_s=0.1, repeats=max(200, runs), min_time_s=0.3)
            wall_ms = float(np.median(time_engine(engine, feed, settings)))
    ms, own = min(rounds, key=lambda r: r[0])
    return ms, wall_ms, [f"{t.op}:{t.exec_type}" for t in own]


def _own(name: str, op: str, names: frozenset[str] = frozenset()) -> bool:
    """A profiled kernel that is the unit's, not the harness's (its inputs, outputs, layout changes);
    `names`: the unit's own layers (a Transpose layer of the model is its own, not a layout change)."""
    if name.startswith(HARNESS):
        return False
    return op not in HARNESS_OPS or re.sub(r"(_token_\d+|_nchwc|/.*)$", "", name) in names


def _profile_openvino(model, target: Target, precision: str, runs: int, wall: bool,
                      names: frozenset[str] = frozenset()) -> tuple[float, float | None, list[str]]:
    """OpenVINO, compiled as edgekit's OpenVINO backend loads an IR (latency hint, one stream, the
    target's cores, f32 unless fp16), with performance counters: per run the sum of the unit's own
    executed kernels; the QUANTILE of those sums over the runs after WARMUP runs. The lower quantile
    (not the median) keeps bursts of other load on the machine out of the table."""
    import openvino as ov

    core = ov.Core()
    device = target.backend.options.get("device", "CPU")
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f16" if precision == "fp16" else "f32"}
    if device == "CPU":
        config["INFERENCE_NUM_THREADS"] = str(target.cores)
    ov_model = core.read_model(model.SerializeToString(), b"")
    request = core.compile_model(ov_model, device, {**config, "PERF_COUNT": "YES"}).create_infer_request()
    feed = _feed(model)
    for _ in range(WARMUP):
        request.infer(feed)
    totals, kernels = [], []
    for _ in range(runs):
        request.infer(feed)
        own = [i for i in request.profiling_info if i.status.name == "EXECUTED" and _own(i.node_name, i.node_type, names)]
        totals.append(sum(i.real_time.total_seconds() for i in own) * 1e3)
        kernels = [f"{i.node_type}:{i.exec_type}" for i in own]
    wall_ms = None
    if wall:
        import time

        plain = core.compile_model(ov_model, device, config).create_infer_request()
        times = []
        for i in range(WARMUP + 10 * runs):
            start = time.perf_counter()
            plain.infer(feed, share_inputs=True, share_outputs=True)
            if i >= WARMUP:
                times.append((time.perf_counter() - start) * 1e3)
        wall_ms = float(np.percentile(times, QUANTILE * 100))
    return float(np.percentile(totals, QUANTILE * 100)), wall_ms, kernels


PROFILERS = {"openvino": _profile_openvino}  # runtimes profiled directly; others through their Engine


def wait_for_quiet(max_s: float, busy_percent: float = 25.0) -> bool:
    """Wait (at most max_s) until the rest of the machine uses less than busy_percent of its CPUs:
    on a shared machine, a table measured under other jobs' load would keep that load forever."""
    import time

    import psutil

    deadline = time.monotonic() + max_s
    while True:
        if psutil.cpu_percent(interval=0.25) < busy_percent:
            return True
        if time.monotonic() > deadline:
            return False


def _signature(layer: Layer) -> str:
    kernel = "x".join(map(str, layer.attr("kernel_shape", ())))
    strides = "x".join(map(str, layer.attr("strides", ())))
    return f"{layer.op}{kernel}s{strides}g{layer.attr('group', 1)}"


def _feed(model) -> dict[str, np.ndarray]:
    from onnx import helper

    rng = np.random.default_rng(0)
    feed = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feed[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feed[value.name] = np.ones(shape, dtype)
        elif dtype == np.uint8:  # a quantized activation
            feed[value.name] = rng.integers(0, 256, shape).astype(dtype)
        else:  # indices, masks: zeros are valid for any table size
            feed[value.name] = np.zeros(shape, dtype)
    return feed
