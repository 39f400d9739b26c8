"""One unit model (`edgekit.microbench`) timed on this machine with the target's runtime: its own
kernels' time from the runtime's profiler, the harness's nodes left out. What the latency table
(`edgekit.latency_table`) and the device agent's `unit` jobs both call."""

from __future__ import annotations

import functools
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from edgekit.backends.base import Backend, UnitRun, UnitTimes
from edgekit.microbench import HARNESS
from edgekit.plan import PrecisionPlan
from edgekit.profile import ProfileSettings, time_engine
from edgekit.targets import Target

HARNESS_OPS = ("Parameter", "Result", "Reorder", "ReorderInput", "ReorderOutput", "Transpose")
ROUNDS = 3  # through an Engine: profiled in this many rounds of runs/ROUNDS inferences, the least kept


def profile_unit(model, target: Target, backend: Backend, precision: str, runs: int, wall: bool = False) -> UnitTimes:
    """The unit's own profiled time (ms), the wall-clock p50 if asked, and the kernels that ran, on this
    machine: the runtime's own profiler where the backend has one (`Backend.profile_unit`), else through
    the Engine."""
    names = frozenset(n.name for n in model.graph.node if not n.name.startswith(HARNESS))
    unit = UnitRun(precision, _feed(model), runs, wall, functools.partial(_own, names=names))
    direct = backend.profile_unit(model, target, unit)
    return direct if direct is not None else _profile_engine(model, target, backend, unit)


def _profile_engine(model, target: Target, backend, unit: UnitRun) -> UnitTimes:
    """Any backend, through its Engine: per-kernel medians (`layer_times`), the least of ROUNDS rounds."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "unit.onnx"
        onnx.save(model, str(onnx_path))
        artifact = backend.build(onnx_path=onnx_path, plan=PrecisionPlan(unit.precision), target=target, out_dir=Path(tmp))
        engine = backend.load(artifact, target=target, threads=target.cores)
        rounds = []
        for _ in range(ROUNDS):
            own = [t for t in engine.layer_times(unit.feed, max(1, unit.runs // ROUNDS)) if unit.own(t.name, t.op)]
            rounds.append((sum(t.time_ms for t in own), own))
        wall_ms = None
        if unit.wall:
            settings = ProfileSettings(warmup=20, warmup_s=0.1, repeats=max(200, unit.runs), min_time_s=0.3)
            wall_ms = float(np.median(time_engine(engine, unit.feed, settings)))
    ms, own = min(rounds, key=lambda r: r[0])
    return ms, wall_ms, [f"{t.op}:{t.exec_type}" for t in own]


def _own(name: str, op: str, names: frozenset[str] = frozenset()) -> bool:
    """A profiled kernel that is the unit's, not the harness's (its inputs, outputs, layout changes);
    `names`: the unit's own layers (a Transpose layer of the model is its own, not a layout change)."""
    if name.startswith(HARNESS):
        return False
    return op not in HARNESS_OPS or re.sub(r"(_token_\d+|_nchwc|/.*)$", "", name) in names


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
