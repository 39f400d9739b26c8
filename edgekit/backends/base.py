"""The one extension point that matters: a backend turns ONNX + a precision plan into the runtime's
engine, loads it, and runs it. Measurement (warm-up, repeats, percentiles) is edgekit's harness, the
same for every runtime, in `edgekit.profile`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from edgekit.errors import BadInput, MissingRuntime
from edgekit.plan import PrecisionPlan
from edgekit.targets import Target


@dataclass(frozen=True)
class Availability:
    """Whether this machine can build the engine, and whether it can also run it (the device is here)."""

    build: bool
    run: bool
    reason: str = ""
    versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact:
    """What a build produced: the engine file the runtime loads, and every file that goes with it."""

    backend: str
    path: Path
    files: tuple[Path, ...]
    precision: str
    options: dict = field(default_factory=dict)


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


class Backend(Protocol):
    name: str
    suffixes: tuple[str, ...]  # engine files this backend loads

    def available(self, target: Target) -> Availability: ...

    def build(self, *, onnx_path: Path, plan: PrecisionPlan, target: Target, out_dir: Path) -> Artifact:
        """Build the engine; when the plan has int8 layers, onnx_path is the calibrated Q/DQ model."""
        ...

    def load(self, artifact: Artifact, *, target: Target, threads: int) -> Engine: ...

    def artifact_from_file(self, path: Path) -> Artifact: ...


# name → (module, extra that installs its runtime). Runtimes not here are built by later versions.
BACKENDS: dict[str, tuple[str, str]] = {
    "openvino": ("edgekit.backends.openvino", "openvino"),
    "onnxruntime": ("edgekit.backends.onnxruntime", "onnxruntime"),
}
NOT_YET = {"tensorrt": "tensorrt", "tflite": "tflite", "edgetpu": "tflite", "hls4ml": "fpga"}


def get_backend(name: str) -> Backend:
    if name in BACKENDS:
        module, _ = BACKENDS[name]
        return importlib.import_module(module).BACKEND
    if name in NOT_YET:
        raise MissingRuntime(f"the '{name}' backend is not in edgekit {_version()} yet")
    raise BadInput(f"unknown backend '{name}' (known: {', '.join(sorted(BACKENDS))})")


def backend_for_file(path: Path, preferred: str) -> Backend:
    """The backend that loads this engine file: the target's own if it can, else the first that can."""
    names = [preferred, *(n for n in BACKENDS if n != preferred)]
    for name in names:
        if name in BACKENDS:
            backend = get_backend(name)
            if path.suffix.lower() in backend.suffixes:
                return backend
    raise BadInput(f"{path}: no backend loads '{path.suffix}' files (known: .xml OpenVINO IR, .onnx)")


def _version() -> str:
    from edgekit import __version__

    return __version__
