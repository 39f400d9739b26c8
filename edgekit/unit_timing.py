"""One unit model (`edgekit.microbench`) timed on this machine with the target's runtime: its own
kernels' time from the runtime's profiler, the harness's nodes left out. What the latency table
(`edgekit.latency_table`) and the device agent's `unit` jobs both call."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from edgekit.microbench import HARNESS
from edgekit.plan import PrecisionPlan
from edgekit.profile import ProfileSettings, time_engine
from edgekit.targets import Target

HARNESS_OPS = ("Parameter", "Result", "Reorder", "ReorderInput", "ReorderOutput", "Transpose")
ROUNDS = 3  # through an Engine: profiled in this many rounds of runs/ROUNDS inferences, the least kept
WARMUP = 10
QUANTILE = 0.25  # of the per-run profiled totals


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
    deadline = time.monotonic() + max_s
    while True:
        if psutil.cpu_percent(interval=0.25) < busy_percent:
            return True
        if time.monotonic() > deadline:
            return False


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
