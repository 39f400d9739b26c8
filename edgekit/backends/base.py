"""The one extension point that matters: a backend turns ONNX + a precision plan into the runtime's
engine, loads it, and runs it. Measurement (warm-up, repeats, percentiles) is edgekit's harness, the
same for every runtime, in `edgekit.profile`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edgekit.errors import BadInput, MissingRuntime
from edgekit.plan import PrecisionPlan
from edgekit.targets import Target

if TYPE_CHECKING:
    from edgekit.calibrate.observers import TensorStats
    from edgekit.calibrate.run import CalibrationOptions, CalibrationResult
    from edgekit.data import Samples
    from edgekit.models import LoadedModel


@dataclass(frozen=True)
class Availability:
    """Whether this machine can build the engine, and whether it can also run it (the device is here).
    `check`: this machine runs the built artifact, or its exact functional twin, to check accuracy
    though not on the device (LiteRT's CPU kernels for an Edge TPU model, hls4ml's C simulation, the
    Q/DQ ONNX TensorRT builds from in ONNX Runtime); `check_how` says which, for the report."""

    build: bool
    run: bool
    reason: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    check: bool = False
    check_how: str = ""


@dataclass(frozen=True)
class Artifact:
    """What a build produced: the engine file the runtime loads, and every file that goes with it.
    `pending`: the exact step that finishes the engine where its tool is (a command line), when this
    machine could only produce everything up to it (TensorRT without a GPU, Edge TPU without its
    compiler, FPGA synthesis without Vivado); None when the engine is done. `notes`: what the build
    found that the report shows (op coverage, resource estimate, ...), JSON-ready."""

    backend: str
    path: Path
    files: tuple[Path, ...]
    precision: str
    options: dict = field(default_factory=dict)
    pending: str | None = None
    notes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BuildContext:
    """What some runtimes build from besides the ONNX file: LiteRT converts the PyTorch module itself,
    and its int8, like hls4ml's fixed point, is set from edgekit's calibration."""

    model: LoadedModel | None = None  # the source model (pruned, when the search built it)
    float_onnx: Path | None = None  # the exported float ONNX (build's onnx_path is the Q/DQ one for int8)
    calibration: Samples | None = None  # the calibration split
    scales: Path | None = None  # edgekit's calibrated scales (scales.json) when the plan has int8


@dataclass(frozen=True)
class LayerTime:
    name: str
    op: str
    exec_type: str  # the kernel the runtime chose, e.g. brgconv_avx2_f32
    time_ms: float  # median over the profiled runs, from the runtime's own profiler


@dataclass(frozen=True)
class Executed:
    """What the runtime really runs for one planned layer, read back from the built engine."""

    precision: str  # int8, fp16, fp32, bf16
    runtime_layer: str  # the runtime's name for the (possibly fused) layer
    exec_type: str = ""  # the kernel, e.g. jit_avx2_I8; empty where the runtime does not say


class Engine(Protocol):
    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    def layer_times(self, feed: dict[str, np.ndarray], runs: int) -> list[LayerTime]: ...

    def executed(self, feed: dict[str, np.ndarray], layers: list[str]) -> dict[str, Executed]:
        """The precision each of `layers` (ONNX node names) runs in; layers the runtime removed are absent."""
        ...


@dataclass(frozen=True)
class UnitRun:
    """How a cost-model unit (`edgekit.microbench`) is to be timed: in `precision`, on `feed`, `runs`
    profiled runs, the wall-clock p50 too if `wall`; `own(name, op)` tells the unit's own kernels from
    the harness's (its inputs, outputs, layout changes)."""

    precision: str
    feed: dict[str, np.ndarray]
    runs: int
    wall: bool
    own: Callable[[str, str], bool]


UnitTimes = tuple[float, float | None, list[str]]  # own kernels' ms, wall-clock p50 ms (if asked), the kernels


class Backend(Protocol):
    name: str
    suffixes: tuple[str, ...]  # engine files this backend loads
    # Calibration observes every float tensor (the runtime's own calibration cache scales them all), not
    # only those the int8 layers read.
    calibration_observes_all: bool

    def available(self, target: Target) -> Availability: ...

    def build(self, *, onnx_path: Path, plan: PrecisionPlan, target: Target, out_dir: Path,
              context: BuildContext | None = None) -> Artifact:
        """Build the engine; when the plan has int8 layers, onnx_path is the calibrated Q/DQ model.
        Builds as far as this machine can (see Artifact.pending)."""
        ...

    def load(self, artifact: Artifact, *, target: Target, threads: int) -> Engine: ...

    def artifact_from_file(self, path: Path) -> Artifact: ...

    def write_calibration_files(self, result: CalibrationResult, stats: dict[str, TensorStats],
                                options: CalibrationOptions, target: Target, out_dir: Path) -> dict[str, str]:
        """The runtime's own calibration files (TensorRT's cache and layer precisions) beside the Q/DQ
        model and scales.json: {key: path relative to out_dir}; {} where the Q/DQ model is all it takes."""
        ...

    def replan_calibration_files(self, files: dict[str, str], out_dir: Path, planned: dict[str, str]) -> None:
        """Those files (among calibration's `files`, relative to out_dir) made to follow `planned`, a new
        plan from the same calibration (a mixed plan)."""
        ...

    def profile_unit(self, model, target: Target, unit: UnitRun) -> UnitTimes | None:
        """A cost-model unit (an onnx.ModelProto) timed with the runtime's own profiler, without an
        Engine; None where the backend has none (the unit is then timed through its Engine)."""
        ...


class BackendDefaults:
    """What a backend without runtime-specific calibration files or unit profiler inherits."""

    calibration_observes_all = False

    def write_calibration_files(self, result: CalibrationResult, stats: dict[str, TensorStats],
                                options: CalibrationOptions, target: Target, out_dir: Path) -> dict[str, str]:
        return {}

    def replan_calibration_files(self, files: dict[str, str], out_dir: Path, planned: dict[str, str]) -> None:
        return None

    def profile_unit(self, model, target: Target, unit: UnitRun) -> UnitTimes | None:
        return None


@dataclass(frozen=True)
class BackendEntry:
    module: str  # edgekit's module that holds the BACKEND
    extra: str  # the edgekit extra that installs its runtime
    package: str  # the runtime's distribution, whose version reports and agents give
    import_name: str  # the runtime's top-level module


# The one table of backends: name → where it lives and what runtime it needs. Reports, the agent's
# info and the latency tables read their runtime packages from here.
BACKENDS: dict[str, BackendEntry] = {
    "openvino": BackendEntry("edgekit.backends.openvino", "openvino", "openvino", "openvino"),
    "onnxruntime": BackendEntry("edgekit.backends.onnxruntime", "onnxruntime", "onnxruntime", "onnxruntime"),
    "tflite": BackendEntry("edgekit.backends.tflite", "tflite", "ai-edge-litert", "ai_edge_litert"),
    "edgetpu": BackendEntry("edgekit.backends.edgetpu", "tflite", "ai-edge-litert", "ai_edge_litert"),
    "tensorrt": BackendEntry("edgekit.backends.tensorrt", "tensorrt", "tensorrt", "tensorrt"),
    "hls4ml": BackendEntry("edgekit.backends.hls4ml", "fpga", "hls4ml", "hls4ml"),
}


def runtime_packages() -> dict[str, str]:
    """Each runtime's distribution → its import name, once (LiteRT serves two backends)."""
    return {entry.package: entry.import_name for entry in BACKENDS.values()}


def get_backend(name: str) -> Backend:
    if name in BACKENDS:
        return importlib.import_module(BACKENDS[name].module).BACKEND
    raise BadInput(f"unknown backend '{name}' (known: {', '.join(sorted(BACKENDS))})")


def calibration_runtime(target: Target) -> Backend | None:
    """The target's own backend, which says what calibration must observe and writes the runtime's own
    calibration files (`calibrate(..., runtime=)`); None where it cannot load here (then calibration
    writes the Q/DQ model and scales.json only)."""
    try:
        return get_backend(target.backend.name)
    except MissingRuntime:
        return None


def backend_for_file(path: Path, preferred: str) -> Backend:
    """The backend that loads this engine file: the target's own if it can, else the first that can."""
    names = [preferred, *(n for n in BACKENDS if n != preferred)]
    for name in names:
        if name in BACKENDS:
            backend = get_backend(name)
            if path.suffix.lower() in backend.suffixes:
                return backend
    raise BadInput(f"{path}: no backend loads '{path.suffix}' files (known: .xml OpenVINO IR, .onnx)")
