"""ONNX Runtime (CPU execution provider): the ONNX graph, optimised offline and saved as the engine.

Per-layer times come from ONNX Runtime's own profiler (`enable_profiling`), read from its JSON trace.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np

from edgekit.backends.base import Artifact, Availability, BackendDefaults, BuildContext, Executed, LayerTime
from edgekit.errors import BadInput, Failure, require, runtime_message
from edgekit.plan import PrecisionPlan
from edgekit.targets import Target


def _ort():
    return require("onnxruntime", "onnxruntime")


def _options(threads: int, profile_dir: str | None = None):
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / "ort")
    return options


# Kernels ONNX Runtime fuses Q/DQ node groups into: these run in int8.
INT8_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
            "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul"}


class OnnxRuntimeEngine:
    def __init__(self, path: Path, threads: int):
        ort = _ort()
        self._path, self._threads = path, threads
        try:
            self._session = ort.InferenceSession(str(path), _options(threads), providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own Fail/InvalidGraph types for bad files
            raise BadInput(f"ONNX Runtime cannot load {path.name}: {runtime_message(err)}") from err

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self._session.run(None, feed)]

    def executed(self, feed: dict[str, np.ndarray], layers: list[str]) -> dict[str, Executed]:
        """Read back the graph ONNX Runtime runs (optimised as in the session): a layer whose Q/DQ
        group was fused into a QLinear*/Integer kernel runs in int8; anything else runs in fp32."""
        import onnx

        ort = _ort()
        with tempfile.TemporaryDirectory() as tmp:
            options = _options(self._threads)
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            ort.InferenceSession(str(self._path), options, providers=["CPUExecutionProvider"])
            graph = onnx.load(options.optimized_model_filepath).graph
        wanted = set(layers)
        found = {}
        for n in graph.node:
            layer = re.sub(r"_token_\d+$", "", n.name)  # the layout transformer renames nodes NAME_token_K
            if layer in wanted:
                found[layer] = Executed("int8" if n.op_type in INT8_OPS else "fp32", n.name, n.op_type)
        return found

    def layer_times(self, feed: dict[str, np.ndarray], runs: int) -> list[LayerTime]:
        """Median per-node kernel time over `runs`, from a second session with ORT's profiler on
        (the profiler adds its own overhead to each node; the latency percentiles are taken without it)."""
        ort = _ort()
        with tempfile.TemporaryDirectory() as tmp:
            session = ort.InferenceSession(str(self._path), _options(self._threads, tmp),
                                           providers=["CPUExecutionProvider"])
            session.run(None, feed)
            for _ in range(runs):
                session.run(None, feed)
            trace = json.loads(Path(session.end_profiling()).read_text())
        per_node: dict[str, tuple[str, str, list[float]]] = {}
        for event in trace:
            if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
                continue
            args = event.get("args", {})
            name = event["name"][: -len("_kernel_time")]
            per_node.setdefault(name, (args.get("op_name", "?"), args.get("provider", "CPU"), []))[2].append(event.get("dur", 0) / 1e3)
        # The trace holds the warm-up run too: drop each node's first time.
        return [LayerTime(name, op, provider, float(np.median(times[1:] or times)))
                for name, (op, provider, times) in per_node.items()]


class OnnxRuntimeBackend(BackendDefaults):
    name = "onnxruntime"
    suffixes = (".onnx",)

    def available(self, target: Target) -> Availability:
        try:
            ort = _ort()
        except Exception as err:
            return Availability(False, False, str(err))
        versions = {"onnxruntime": ort.__version__}
        if target.backend.options.get("device", "CPU") != "CPU":
            return Availability(False, False, "the onnxruntime backend runs on CPUs only", versions)
        return Availability(True, target.local, "" if target.local else "the device is not this machine", versions)

    def build(self, *, onnx_path: Path, plan: PrecisionPlan, target: Target, out_dir: Path,
              context: BuildContext | None = None) -> Artifact:
        if plan.float_precision != "fp32":
            raise BadInput(f"the onnxruntime backend (CPU) runs fp32 and int8 layers, not {plan.float_precision}")
        ort = _ort()
        engine = Path(out_dir) / "model.ort.onnx"
        options = _options(1)
        # Extended (not 'all') optimisations keep the saved graph loadable by any ONNX Runtime build.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(engine)
        try:
            ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise Failure(f"ONNX Runtime could not build {onnx_path.name}: {runtime_message(err)}") from err
        return Artifact(self.name, engine, (engine,), plan.label, {})

    def artifact_from_file(self, path: Path) -> Artifact:
        return Artifact(self.name, path, (path,), "fp32", {})

    def load(self, artifact: Artifact, *, target: Target, threads: int) -> OnnxRuntimeEngine:
        return OnnxRuntimeEngine(artifact.path, threads)


BACKEND = OnnxRuntimeBackend()
