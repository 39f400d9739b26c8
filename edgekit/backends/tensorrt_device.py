"""TensorRT on the device: finding TensorRT and a CUDA GPU, the Python API build that
`BuildSpec.trtexec()` spells as a command line, and the built engine run, profiled and inspected."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from edgekit.backends import tensorrt_legacy
from edgekit.backends.base import Executed, LayerTime
from edgekit.backends.tensorrt_spec import ENGINE, FOLDER, SOURCE, BuildSpec
from edgekit.errors import BadInput, Failure, require, runtime_message

NOT_HERE = "TensorRT is not installed on this machine: build the engine on the device (JetPack ships TensorRT)"


def _tensorrt() -> tuple[object | None, str]:
    """TensorRT and a CUDA GPU, or None and why not."""
    try:
        import tensorrt as trt
    except ImportError:
        return None, NOT_HERE
    why = ""
    try:
        count = _cuda_call(_cudart().cudaGetDeviceCount())
    except Exception as err:  # no driver or no cuda-python: CUDA's or edgekit's one-line error
        count, why = 0, f" ({runtime_message(err)})"
    return (trt, "") if count else (None, f"TensorRT {trt.__version__} is here but no usable CUDA GPU{why}")


def _cudart():
    try:
        from cuda.bindings import runtime  # cuda-python ≥ 12.6
    except ImportError:
        runtime = require("cuda.cudart", "tensorrt")
    return runtime


def _cuda_call(result):
    err, *rest = result
    if getattr(err, "value", err):  # cuda-python returns (cudaError_t, *values)
        raise Failure(f"CUDA error {getattr(err, 'value', err)} ({err})")
    return rest[0] if len(rest) == 1 else rest


def build_engine(trt, spec: BuildSpec, out_dir: Path) -> Path:
    """The Python API build that `spec.trtexec()` spells as a command line. TensorRT ≥ 10.1: a strongly
    typed network, its precisions read from the ONNX; before, tensorrt_legacy's flags."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    typed = spec.strongly_typed
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed else tensorrt_legacy.network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(out_dir / SOURCE)):
        raise BadInput(f"TensorRT's ONNX parser rejects {SOURCE}: {parser.get_error(0)}")
    config = builder.create_builder_config()
    if typed:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mb << 20)
    else:
        tensorrt_legacy.workspace(trt, config, spec.workspace_mb << 20)
        tensorrt_legacy.weak_typing(trt, spec, network, config)
    if hasattr(config, "builder_optimization_level"):  # TensorRT 8.6 on
        config.builder_optimization_level = spec.optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if spec.dla_core is not None:  # the layers DLA cannot run fall back to the GPU (trtexec --allowGPUFallback)
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = spec.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    timing = out_dir / FOLDER / "timing.cache"
    config.set_timing_cache(config.create_timing_cache(timing.read_bytes() if timing.is_file() else b""), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise Failure(f"TensorRT could not build {SOURCE} (its log above says why)")
    with open(out_dir / ENGINE, "wb") as handle:
        handle.write(serialized)
    with open(timing, "wb") as handle:
        handle.write(config.get_timing_cache().serialize())
    return out_dir / ENGINE


class TensorRTEngine:
    """A deserialized engine with one device buffer per I/O tensor (static shapes, batch 1)."""

    def __init__(self, trt, path: Path):
        self._trt, self._cudart = trt, _cudart()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # kept: it must outlive its engines
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BadInput(f"TensorRT cannot load {path.name}: not an engine of this TensorRT version and GPU")
        self._engine, self._context = engine, engine.create_execution_context()
        self._io = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape, dtype = tuple(engine.get_tensor_shape(name)), np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            pointer = _cuda_call(self._cudart.cudaMalloc(max(int(np.prod(shape)) * dtype.itemsize, 1)))
            self._io.append((name, shape, dtype, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT, pointer))

    def __del__(self):
        for *_, pointer in getattr(self, "_io", []):
            self._cudart.cudaFree(pointer)

    def _execute(self, context, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        copy = self._cudart.cudaMemcpyKind
        for name, shape, dtype, is_input, pointer in self._io:
            if is_input:
                host = np.ascontiguousarray(feed[name], dtype).reshape(shape)
                _cuda_call(self._cudart.cudaMemcpy(pointer, host.ctypes.data, host.nbytes, copy.cudaMemcpyHostToDevice))
        if not context.execute_v2([pointer for *_, pointer in self._io]):
            raise Failure("TensorRT failed to run the engine")
        outputs = []
        for _, shape, dtype, is_input, pointer in self._io:
            if not is_input:
                host = np.empty(shape, dtype)
                _cuda_call(self._cudart.cudaMemcpy(host.ctypes.data, pointer, host.nbytes, copy.cudaMemcpyDeviceToHost))
                outputs.append(host)
        return outputs

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._execute(self._context, feed)

    def _layers(self) -> list[dict]:
        inspector = self._engine.create_engine_inspector()
        layers = json.loads(inspector.get_engine_information(self._trt.LayerInformationFormat.JSON)).get("Layers", [])
        return [layer if isinstance(layer, dict) else {"Name": layer} for layer in layers]  # names only: not built detailed

    def layer_times(self, feed: dict[str, np.ndarray], runs: int) -> list[LayerTime]:
        """Median per-layer time over `runs`, from TensorRT's IProfiler on a second execution context."""
        trt = self._trt

        class Profiler(trt.IProfiler):
            def __init__(self):
                trt.IProfiler.__init__(self)
                self.times: dict[str, list[float]] = {}

            def report_layer_time(self, layer_name, ms):
                self.times.setdefault(layer_name, []).append(ms)

        context = self._engine.create_execution_context()
        self._execute(context, feed)  # warm-up, unprofiled
        context.profiler = profiler = Profiler()
        for _ in range(runs):
            self._execute(context, feed)
        kinds = {layer.get("Name"): (layer.get("LayerType", "?"), layer.get("TacticName", "")) for layer in self._layers()}
        return [LayerTime(name, *kinds.get(name, ("?", "")), float(np.median(times))) for name, times in profiler.times.items()]

    def executed(self, feed: dict[str, np.ndarray], layers: list[str]) -> dict[str, Executed]:
        """Read the built engine back (IEngineInspector): each engine layer's input format names its
        precision, and its metadata names the ONNX nodes fused into it."""
        wanted, found = set(layers), {}
        for layer in self._layers():
            onnx_names = re.findall(r"\[ONNX Layer: ([^\]]+)\]", layer.get("Metadata", "")) or layer.get("Name", "").split(" + ")
            formats = " ".join(str(t.get("Format/Datatype", "")) for t in layer.get("Inputs", []))
            match = re.search(r"int8|fp16|half|bf16|fp32|float", formats, re.IGNORECASE)
            precision = {"half": "fp16", "float": "fp32"}.get(match.group(0).lower(), match.group(0).lower()) if match else "fp32"
            for onnx_name in onnx_names:
                if onnx_name in wanted and onnx_name not in found:
                    found[onnx_name] = Executed(precision, layer.get("Name", ""), layer.get("TacticName", ""))
        return found
