"""The calibration step: observe the fp32 graph on the calibration split, choose scales, and write
the int8 model in every form the target's runtime takes (Q/DQ ONNX always; TensorRT's cache and
layer precisions for TensorRT targets), plus scales.json with every scale and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.calibrate import observers, qdq, scales, trt_cache
from edgekit.calibrate.observers import TensorStats
from edgekit.calibrate.scales import QParams
from edgekit.data import Samples
from edgekit.errors import BadInput
from edgekit.plan import PrecisionPlan
from edgekit.targets import Target
from edgekit.util import write_json

FEW_SAMPLES = 16  # below this, scales are noisy: warn


@dataclass(frozen=True)
class CalibrationOptions:
    method: str = "mse"
    percentile: float = 99.99
    samples: int | None = None  # at most this many calibration samples (default: the whole split)
    bias_correction: bool = True

    def __post_init__(self) -> None:
        if self.method not in scales.METHODS:
            raise BadInput(f"unknown calibration method '{self.method}' (known: {', '.join(scales.METHODS)})")
        if not 50 < self.percentile <= 100:
            raise BadInput(f"--percentile must be in (50, 100], got {self.percentile}")
        if self.samples is not None and self.samples < 1:
            raise BadInput(f"--calibration-samples must be at least 1, got {self.samples}")


@dataclass
class CalibrationResult:
    qdq_path: Path
    planned: dict[str, str]  # every quantizable layer → its precision, after the demotions below
    demoted: dict[str, str]  # layer the plan made int8 but that stays float → why
    params: dict[str, QParams]  # activation tensor → quantizer (every observed tensor)
    summary: qdq.QdqSummary
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # what was written, relative to out_dir
    samples: int = 0
    seconds: float = 0.0

    @property
    def int8_layers(self) -> list[str]:
        return [name for name, p in self.planned.items() if p == "int8"]


def symmetric_activations(target: Target) -> bool:
    return target.quantization.activations == "symmetric"


def resolve_plan(plan: PrecisionPlan, model) -> dict[str, str]:
    """The plan as {layer: precision} for every quantizable layer; names the plan gives must exist."""
    nodes = {n.name: n.op_type for n in model.graph.node}
    layers = qdq.quantizable_layers(model)
    for name, precision in plan.layers.items():
        if name not in nodes:
            close = [n for n in layers if name in n or n in name][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else f" (layers: {', '.join(list(layers)[:8])}{' …' if len(layers) > 8 else ''})"
            raise BadInput(f"precision plan names layer '{name}', which is not in the model{hint}")
        if precision == "int8" and name not in layers:
            raise BadInput(f"precision plan makes '{name}' int8, but it is a {nodes[name]}: int8 applies to "
                           f"{'/'.join(qdq.QUANTIZABLE)} layers")
    return {name: plan.precision_of(name) for name in layers}


def _take(samples: Samples, asked: int | None, warnings: list[str]) -> Samples:
    if len(samples) == 0:
        raise BadInput(f"calibration data {samples.source} is empty")
    if asked is not None and asked > len(samples):
        warnings.append(f"asked for {asked} calibration samples but the calibration split has {len(samples)}: using {len(samples)}")
    elif asked is not None:
        samples = samples.subset(np.arange(asked), f"first {asked}")
    if len(samples) < FEW_SAMPLES:
        warnings.append(f"only {len(samples)} calibration samples: scales may not represent the data (≥ {FEW_SAMPLES} advised)")
    return samples


def _check_stats(stats: dict[str, TensorStats], warnings: list[str]) -> None:
    for name, s in stats.items():
        if s.nonfinite:
            raise BadInput(f"tensor '{name}' holds {s.nonfinite} NaN/Inf values on the calibration data: "
                           "check the data (scaling, NaN pixels) or the model")
        if s.count and s.max - s.min == 0:
            warnings.append(f"tensor '{name}' is constant ({s.min:g}) on every calibration sample: its scale covers [{min(s.min, 0):g}, {max(s.max, 0):g}]")


def calibrate(onnx_path: Path, samples: Samples, target: Target, plan: PrecisionPlan, out_dir: Path,
              options: CalibrationOptions = CalibrationOptions()) -> CalibrationResult:
    """Calibrate the fp32 ONNX model and write `model.int8.onnx` (Q/DQ), scales.json and the target
    runtime's own files into out_dir."""
    import onnx

    started = time.perf_counter()
    warnings: list[str] = []
    model = onnx.load(str(onnx_path))
    planned = resolve_plan(plan, model)
    samples = _take(samples, options.samples, warnings)
    layers = qdq.quantizable_layers(model)
    init_arrays = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    # Observe what int8 layers read; TensorRT's cache wants every tensor.
    observed = None if target.backend.name == "tensorrt" else sorted(
        {t for name, p in planned.items() if p == "int8" for t in qdq.activation_inputs(layers[name], init_arrays)}
        & set(observers.float_tensors(model)))
    stats = observers.collect(model, samples, observed)
    _check_stats(stats, warnings)
    symmetric = symmetric_activations(target)
    params = {name: scales.qparams(*scales.activation_range(s, options.method, symmetric=symmetric, percentile=options.percentile),
                                   symmetric=symmetric, method=options.method)
              for name, s in stats.items()}
    demoted: dict[str, str] = {}
    if not target.quantization.activation_matmul:
        for name, precision in planned.items():
            node = layers[name]
            if precision == "int8" and name not in plan.layers and node.op_type == "MatMul" and \
                    len(qdq.activation_inputs(node, init_arrays)) == 2:
                demoted[name] = (f"a product of two activations (attention): {target.backend.name} on {target.name} "
                                 "runs it in float (name it in --plan to try int8)")
    for name, precision in planned.items():
        if precision != "int8":
            continue
        for tensor in qdq.activation_inputs(layers[name], init_arrays):
            s = stats.get(tensor)
            if s is None:
                demoted[name] = f"its input '{tensor}' is not a float activation"
            elif s.sentinel:
                demoted[name] = (f"its input '{tensor}' holds sentinel values (|x| up to {max(abs(s.min), abs(s.max)):.3g}, "
                                 f"real values within ±{s.real_bound:.3g}, e.g. an additive attention mask): kept in float")
    for name in demoted:
        planned[name] = "fp32" if "fp32" in target.precisions.supported else target.precisions.fast[0]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    qdq_path = out_dir / "model.int8.onnx"
    int8 = [name for name, p in planned.items() if p == "int8"]
    needed = {t for name in int8 for t in qdq.activation_inputs(layers[name], init_arrays)}
    summary = qdq.write_qdq(model, int8, {t: params[t] for t in needed}, qdq_path,
                            channel_means={n: s.channel_mean for n, s in stats.items() if s.channel_mean is not None},
                            bias_correction=options.bias_correction)
    result = CalibrationResult(qdq_path, planned, demoted, params, summary, warnings, {"qdq_onnx": qdq_path.name},
                               len(samples), 0.0)
    _write_scales(out_dir / "scales.json", result, stats, options, symmetric, samples)
    result.files["scales"] = "scales.json"
    if target.backend.name == "tensorrt":
        result.files.update(_write_tensorrt(out_dir, result, stats, options, target))
    result.seconds = time.perf_counter() - started
    return result


def _write_scales(path: Path, result: CalibrationResult, stats: dict[str, TensorStats], options: CalibrationOptions,
                  symmetric: bool, samples: Samples) -> None:
    tensors = {}
    for name, p in result.params.items():
        s = stats[name]
        entry = {**p.as_dict(), "observed_min": s.min, "observed_max": s.max, "quantized": name in result.summary.activations}
        if s.sentinel:
            entry["sentinel"] = {"real_bound": s.real_bound, "note": "kept in float: its consumers are not quantized"}
        tensors[name] = entry
    write_json(path, {
        "method": options.method, "percentile": options.percentile if options.method == "percentile" else None,
        "activations": "symmetric int8" if symmetric else "asymmetric uint8",
        "weights": "per-channel symmetric int8, narrow range [-127, 127]",
        "bias_correction": options.bias_correction,
        "calibration": {"source": samples.source, "samples": len(samples), "sha256": samples.sha256()},
        "planned": result.planned, "demoted": result.demoted, "warnings": result.warnings,
        "tensors": tensors, "weight_scales": result.summary.weights, "bias_shift": result.summary.bias_corrected,
    })


def _write_tensorrt(out_dir: Path, result: CalibrationResult, stats: dict[str, TensorStats], options: CalibrationOptions,
                    target: Target) -> dict[str, str]:
    """TensorRT's calibration cache (symmetric scales of every non-sentinel tensor) and the
    trtexec layer-precision flags that pin the plan."""
    folder = out_dir / "tensorrt"
    folder.mkdir(exist_ok=True)
    cache = {}
    for name, s in stats.items():
        if s.sentinel:
            continue  # no scale: TensorRT keeps the tensor in float
        lo, hi = scales.activation_range(s, options.method, symmetric=True, percentile=options.percentile)
        cache[name] = scales.qparams(lo, hi, symmetric=True, method=options.method).scale
    version = str(target.backend.options.get("tensorrt_version", "10.3.0"))
    trt_cache.write_cache(folder / "calibration.cache", cache, version=version, algorithm=trt_cache.ALGORITHMS[options.method])
    flags = trt_cache.layer_precisions(result.planned)
    (folder / "layer_precisions.txt").write_text(flags + "\n")
    command = ("trtexec --onnx=model.onnx --int8 --fp16 --calib=tensorrt/calibration.cache "
               f"--precisionConstraints=obey --layerPrecisions={flags} --saveEngine=model.engine")
    (folder / "trtexec.sh").write_text("#!/bin/sh\n# Build on the device (TensorRT is not on this machine). Run from the run directory.\n"
                                       "# Or build the explicit-quantization engine from the Q/DQ model:\n"
                                       "#   trtexec --onnx=model.int8.onnx --int8 --fp16 --saveEngine=model.engine\n" + command + "\n")
    return {"tensorrt_cache": "tensorrt/calibration.cache", "tensorrt_layer_precisions": "tensorrt/layer_precisions.txt",
            "tensorrt_build": "tensorrt/trtexec.sh"}
