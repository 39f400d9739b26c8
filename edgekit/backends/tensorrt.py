"""TensorRT (Jetson): the engine is built from an explicitly quantized (Q/DQ) ONNX on the device.

An engine is specific to the GPU and the TensorRT version that build it, so edgekit builds it only
where TensorRT and the device are. Elsewhere it does everything up to it: the ONNX TensorRT parses
(`model.trt.onnx`), checked against TensorRT's Q/DQ rules; the calibration cache and layer-precision
file; and `tensorrt/trtexec.sh`, the trtexec line equal to the Python build below. The accuracy
check runs that same ONNX in ONNX Runtime with graph optimizations off (the Q/DQ arithmetic as
written), which is what TensorRT computes in int8, not TensorRT itself.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.backends.base import Artifact, Availability, BuildContext, Executed, LayerTime
from edgekit.calibrate import trt_cache
from edgekit.calibrate.qdq import QUANTIZABLE
from edgekit.errors import BadInput, Failure, MissingRuntime, require, runtime_message
from edgekit.plan import PrecisionPlan
from edgekit.targets import Target
from edgekit.util import atomic_write_text

SOURCE, ENGINE, FOLDER = "model.trt.onnx", "model.engine", "tensorrt"
MIN_QDQ_OPSET = 13  # per-axis (per-channel) QuantizeLinear/DequantizeLinear came in opset 13
DOCUMENTED_OPSET = 19  # the highest TensorRT 9.2's operators.md lists; 10.x parses at least that
# Ops TensorRT's ONNX parser does not import (ONNX-TensorRT operators.md, TensorRT 10.x: "N").
UNSUPPORTED = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "CenterCropPad",
    "Col2Im", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear", "ImageDecoder",
    "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss",
    "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv", "QLinearMatMul", "RegexFullMatch",
    "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
    "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat", "StringNormalizer", "StringSplit",
    "TfIdfVectorizer", "Unique"})
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


@dataclass(frozen=True)
class BuildSpec:
    """One build, as the Python API does it and as trtexec does it: the two are made from this."""

    int8: bool
    fp16: bool
    layers: dict[str, str] = field(default_factory=dict)  # float layers pinned to their planned precision
    outputs: dict[str, str] = field(default_factory=dict)  # and their output types (not the network's outputs)
    workspace_mb: int = 1024
    optimization_level: int = 3

    def trtexec(self) -> str:
        args = [f"--onnx={SOURCE}", f"--saveEngine={ENGINE}"]
        args += ["--int8"] * self.int8 + ["--fp16"] * self.fp16
        if self.layers:
            args += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{n}:{p}" for n, p in self.layers.items())]
        if self.outputs:
            args += ["--layerOutputTypes=" + ",".join(f"{n}:{p}" for n, p in self.outputs.items())]
        args += [f"--memPoolSize=workspace:{self.workspace_mb}M", f"--builderOptimizationLevel={self.optimization_level}",
                 f"--timingCacheFile={FOLDER}/timing.cache", "--profilingVerbosity=detailed",
                 f"--exportLayerInfo={FOLDER}/layers.json", "--skipInference"]
        return " ".join(["trtexec", *map(shlex.quote, args)])


def build_spec(model, plan: PrecisionPlan, target: Target) -> BuildSpec:
    """Flags from the plan: int8 where Q/DQ says so, fp16 if any layer is fp16, and, once more than
    one precision is allowed, every float Conv/Gemm/MatMul pinned to its plan (obeyed, not preferred)."""
    layers = {n.name: plan.precision_of(n.name) for n in model.graph.node if n.op_type in QUANTIZABLE}
    int8 = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    fp16 = "fp16" in layers.values() or plan.default == "fp16"
    pinned = {name: p for name, p in layers.items() if p != "int8"} if (int8 or fp16) else {}
    ends = {n.name for n in model.graph.node if set(n.output) & {o.name for o in model.graph.output}}
    options = target.backend.options
    return BuildSpec(int8, fp16, pinned, {n: p for n, p in pinned.items() if n not in ends},
                     int(options.get("workspace_mb", 1024)), int(options.get("builder_optimization_level", 3)))


# --- the engine's source: TensorRT's Q/DQ rules -------------------------------------------------------

def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    found = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            found[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return found


def _axis(node, rank: int) -> int:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    return axis + rank if axis < 0 else axis


def _output_axis(tensor: str, rank: int, consumers: dict) -> tuple[int | None, str]:
    """The output-channel axis of the weight `tensor` for the layer that reads it (through a DQ)."""
    for user in consumers.get(tensor, []):
        if user.op_type == "DequantizeLinear":
            return _output_axis(user.output[0], rank, consumers)
        if len(user.input) > 1 and user.input[1] == tensor:
            trans_b = next((a.i for a in user.attribute if a.name == "transB"), 0)
            axis = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0 if trans_b else 1, "MatMul": rank - 1}.get(user.op_type)
            if axis is not None:
                return axis, f"{user.op_type} '{user.name}'"
    return None, ""


def check_source(model, name: str) -> dict:
    """Raise BadInput, naming the node, where TensorRT would refuse the model: its opset, ops its
    parser lacks, and Q/DQ that is not symmetric int8 (zero point 0, constant positive scales, per
    tensor on activations, per output channel on weights). Returns counts for the build notes."""
    graph = model.graph
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < (MIN_QDQ_OPSET if qdq else 9):
        raise BadInput(f"{name}: ONNX opset {opset}; TensorRT needs ≥ {MIN_QDQ_OPSET if qdq else 9}"
                       + (" for per-channel Q/DQ" if qdq else ""))
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise BadInput(f"{name}: node '{node.name}' is {node.domain}.{node.op_type}: TensorRT's ONNX parser "
                           "reads standard ONNX ops only (a custom op needs a TensorRT plugin)")
        if node.op_type in UNSUPPORTED:
            raise BadInput(f"{name}: {node.op_type} '{node.name}' is not an op TensorRT's ONNX parser imports")
    consts = _constants(graph)
    consumers: dict[str, list] = {}
    for n in graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    counts = {"opset": opset, "qdq_nodes": 0, "per_channel_weights": 0, "int32_dequantize": 0}
    for node in qdq:
        where = f"{name}: {node.op_type} '{node.name or node.output[0]}'"
        x, scale = consts.get(node.input[0]), consts.get(node.input[1])
        zero = node.input[2] if len(node.input) > 2 else ""
        if scale is None or (zero and zero not in consts):
            raise BadInput(f"{where}: its scale and zero point must be constants for TensorRT")
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise BadInput(f"{where}: its scale must be positive and finite")
        if x is not None and x.dtype == np.int32:
            counts["int32_dequantize"] += 1  # an int32 bias: folded into float (TensorRT dequantizes int8 only)
            continue
        if not zero:
            raise BadInput(f"{where}: no zero point, which ONNX reads as uint8; TensorRT runs int8: give an int8 zero point of 0")
        zp = consts[zero]
        if zp.dtype != np.int8:
            raise BadInput(f"{where}: {zp.dtype} zero point (asymmetric {zp.dtype}): TensorRT takes symmetric int8 "
                           "only; calibrate for a TensorRT target (quantization.activations: symmetric)")
        if np.any(zp != 0):
            raise BadInput(f"{where}: zero point {int(zp.flat[np.flatnonzero(zp)[0]])} (asymmetric): TensorRT takes "
                           "symmetric int8 only, zero point 0")
        if scale.size > 1:
            if x is None:
                raise BadInput(f"{where}: per-channel scales on an activation: TensorRT quantizes activations per tensor")
            axis = _axis(node, x.ndim)
            if not 0 <= axis < x.ndim or x.shape[axis] != scale.size:
                raise BadInput(f"{where}: {scale.size} scales for axis {axis} of a {list(x.shape)} weight")
            expected, layer = _output_axis(node.output[0], x.ndim, consumers)
            if expected is not None and axis != expected:
                raise BadInput(f"{where}: weight scales on axis {axis}: TensorRT wants them per output channel, "
                               f"axis {expected} for {layer}")
            counts["per_channel_weights"] += 1
        counts["qdq_nodes"] += 1
    return counts


def fold_int32_dequantize(model) -> int:
    """Replace each DequantizeLinear of a constant int32 tensor (a quantized bias) by the float tensor
    it computes, (q - zero point) · scale: the same values, in the form TensorRT accepts."""
    from onnx import numpy_helper

    graph = model.graph
    consts = _constants(graph)
    folded = []
    for node in graph.node:
        x = consts.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if x is None or x.dtype != np.int32:
            continue
        scale = consts[node.input[1]].astype(np.float32)
        zp = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, np.int32)
        shape = [1] * x.ndim
        if scale.size > 1:
            shape[_axis(node, x.ndim)] = -1
        value = (x - zp.reshape(shape)).astype(np.float32) * scale.reshape(shape)
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    used = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return len(folded)


def _write_source(onnx_path: Path, out: Path) -> dict:
    import onnx

    try:
        model = onnx.load(str(onnx_path))
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # onnx raises its own ValidationError/DecodeError
        raise BadInput(f"{onnx_path.name} is not a valid ONNX model: {runtime_message(err)}") from err
    counts = check_source(model, onnx_path.name)
    counts["int32_dequantize"] = fold_int32_dequantize(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out))
    return {**counts, "model": model}


def _calibration_files(out_dir: Path, planned: dict[str, str], target: Target, context: BuildContext | None) -> dict:
    """edgekit's calibration in TensorRT's own files (written by calibrate for TensorRT targets; made
    here from scales.json otherwise), each read back and checked."""
    folder = out_dir / FOLDER
    cache, flags = folder / "calibration.cache", folder / "layer_precisions.txt"
    version = str(target.backend.options.get("tensorrt_version", "10.3.0"))
    if not cache.is_file():
        scales = context.scales if context and context.scales else out_dir / "scales.json"
        if not Path(scales).is_file():
            raise BadInput("int8 for TensorRT needs edgekit's calibration (scales.json): deploy or calibrate with --precision int8")
        saved = json.loads(Path(scales).read_text())
        trt_cache.write_cache(cache, {t: v["scale"] for t, v in saved["tensors"].items() if "sentinel" not in v},
                              version=version, algorithm=trt_cache.ALGORITHMS.get(saved.get("method"), "EntropyCalibration2"))
    code, algorithm, scales = trt_cache.read_cache(cache)
    if code != trt_cache.version_code(version):
        raise BadInput(f"{cache}: written for TensorRT {code}, but {target.name} runs TensorRT {version} "
                       f"({trt_cache.version_code(version)}): calibrate again")
    if not flags.is_file():
        atomic_write_text(flags, trt_cache.layer_precisions(planned) + "\n")
    return {"cache": cache, "flags": flags, "header": f"TRT-{code}-{algorithm}", "tensors": len(scales)}


def _script(spec: BuildSpec, target: Target, out_dir: Path, calibrated: bool) -> str:
    lines = ["#!/bin/sh", f"# Builds {ENGINE} on the device ({target.name}, TensorRT "
             f"{target.backend.options.get('tensorrt_version', '10')}); written by edgekit, run from anywhere.",
             'cd "$(dirname "$0")/.." || exit 1', spec.trtexec()]
    if calibrated:  # implicit quantization: the same scales, TensorRT choosing the int8 kernels itself
        fp32 = "model.equalized.onnx" if (out_dir / "model.equalized.onnx").is_file() else "model.onnx"
        lines.insert(3, f"# Or from the float model and the calibration cache: trtexec --onnx={fp32} --int8 --fp16 "
                        f"--calib={FOLDER}/calibration.cache --precisionConstraints=obey "
                        f"--layerPrecisions=$(cat {FOLDER}/layer_precisions.txt) --saveEngine={ENGINE}")
    return "\n".join(lines) + "\n"


def _source_line(source: dict, spec: BuildSpec) -> str:
    line = f"{SOURCE} (what TensorRT parses): ONNX checker passed, opset {source['opset']}"
    if spec.int8:
        line += (f"; TensorRT's Q/DQ rules hold on {source['qdq_nodes']} Q/DQ nodes (symmetric int8, zero point 0, "
                 f"{source['per_channel_weights']} weights per output channel)")
    if source["int32_dequantize"]:
        line += f"; {source['int32_dequantize']} int32 bias DequantizeLinear folded to float (TensorRT dequantizes int8 only)"
    if source["opset"] > DOCUMENTED_OPSET:
        line += f"; opset above {DOCUMENTED_OPSET}: check the device TensorRT's operators.md"
    return line


# --- on the device: build, run, profile, inspect -----------------------------------------------------

def build_engine(trt, spec: BuildSpec, out_dir: Path) -> Path:
    """The Python API build that `spec.trtexec()` spells as a command line."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is TensorRT 10's only mode; weakly typed: the plan pins floats
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(out_dir / SOURCE)):
        raise BadInput(f"TensorRT's ONNX parser rejects {SOURCE}: {parser.get_error(0)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mb << 20)
    config.builder_optimization_level = spec.optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for flag, on in (("INT8", spec.int8), ("FP16", spec.fp16), ("OBEY_PRECISION_CONSTRAINTS", bool(spec.layers))):
        if on:
            config.set_flag(getattr(trt.BuilderFlag, flag))
    types = {"fp32": trt.float32, "fp16": trt.float16}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in spec.layers:
            layer.precision = types[spec.layers[layer.name]]
        if layer.name in spec.outputs:
            for j in range(layer.num_outputs):
                layer.set_output_type(j, types[spec.outputs[layer.name]])
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


class QdqTwin:
    """The ONNX TensorRT builds from, in ONNX Runtime with graph optimizations off: Q/DQ computed as
    written, independent of this CPU's int8 kernels. What runs is not TensorRT: no per-layer times
    and no executed precisions are claimed for it."""

    def __init__(self, path: Path, threads: int):
        from edgekit.backends.onnxruntime import _options, _ort

        options = _options(threads)
        options.graph_optimization_level = _ort().GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self._session = _ort().InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own Fail/InvalidGraph types
            raise BadInput(f"ONNX Runtime cannot load {path.name}: {runtime_message(err)}") from err

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self._session.run(None, feed)]

    def layer_times(self, feed: dict[str, np.ndarray], runs: int) -> list[LayerTime]:
        return []

    def executed(self, feed: dict[str, np.ndarray], layers: list[str]) -> dict[str, Executed]:
        return {}


class TensorRTBackend:
    name = "tensorrt"
    suffixes = (".engine", ".plan")

    def available(self, target: Target) -> Availability:
        trt, why = _tensorrt()
        versions = {"tensorrt": trt.__version__} if trt else {}
        try:
            ort = require("onnxruntime", "onnxruntime")
            versions["onnxruntime"] = ort.__version__
            how = (f"the ONNX TensorRT builds from ({SOURCE}, Q/DQ for int8) in ONNX Runtime {ort.__version__}, "
                   "graph optimizations off, on this host: not TensorRT")
        except MissingRuntime:
            ort, how = None, ""
        run = trt is not None and target.local
        if trt is not None and not target.local:
            why = ("the device is not this machine: build the engine on the device (an engine is specific to the GPU "
                   "and TensorRT version that build it)")
        return Availability(True, run, "" if run else why, versions, check=ort is not None, check_how=how)

    def build(self, *, onnx_path: Path, plan: PrecisionPlan, target: Target, out_dir: Path,
              context: BuildContext | None = None) -> Artifact:
        out_dir = Path(out_dir)
        (out_dir / FOLDER).mkdir(parents=True, exist_ok=True)
        source = _write_source(Path(onnx_path), out_dir / SOURCE)
        model = source.pop("model")
        spec = build_spec(model, plan, target)
        if plan.quantized and not spec.int8:
            raise BadInput(f"the plan has int8 layers but {Path(onnx_path).name} has no Q/DQ: build from edgekit's "
                           "calibrated model.int8.onnx (deploy or calibrate with --precision int8)")
        files, summary = [out_dir / SOURCE], [_source_line(source, spec)]
        if spec.int8:
            planned = {n.name: plan.precision_of(n.name) for n in model.graph.node if n.op_type in QUANTIZABLE}
            calibration = _calibration_files(out_dir, planned, target, context)
            files += [calibration["cache"], calibration["flags"]]
            summary.append(f"calibration cache {FOLDER}/calibration.cache ({calibration['header']}, "
                           f"{calibration['tensors']} tensors) and {FOLDER}/layer_precisions.txt read back")
        script = out_dir / FOLDER / "trtexec.sh"
        atomic_write_text(script, _script(spec, target, out_dir, spec.int8))
        script.chmod(0o755)
        files.append(script)
        notes = {"source": SOURCE, "flags": {"int8": spec.int8, "fp16": spec.fp16}, "pinned_layers": spec.layers,
                 "summary": summary}
        trt, why = _tensorrt()
        if trt is not None and target.local:
            engine = build_engine(trt, spec, out_dir)
            return Artifact(self.name, engine, (engine, *files), plan.label, {"source": SOURCE},
                            notes={**notes, "tensorrt": trt.__version__})
        summary.append(f"on the device: sh {FOLDER}/trtexec.sh builds {ENGINE} "
                       f"({'the device is not this machine' if trt else why.split(':')[0]})")
        if plan.float_precision == "fp16":
            summary.append("the accuracy check here runs the fp16 layers in fp32 (ONNX Runtime on the CPU)")
        return Artifact(self.name, out_dir / SOURCE, tuple(files), plan.label, {"source": SOURCE},
                        pending=spec.trtexec(), notes=notes)

    def artifact_from_file(self, path: Path) -> Artifact:
        return Artifact(self.name, path, (path,), "unknown", {})

    def load(self, artifact: Artifact, *, target: Target, threads: int):
        if artifact.path.suffix.lower() not in self.suffixes:
            return QdqTwin(artifact.path, threads)  # the engine is built on the device: its source runs here
        trt = require("tensorrt", "tensorrt")
        engine, why = _tensorrt()
        if engine is None:
            raise MissingRuntime(f"cannot run {artifact.path.name}: {why}")
        return TensorRTEngine(trt, artifact.path)


BACKEND = TensorRTBackend()
