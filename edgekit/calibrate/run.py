"""The calibration step: observe the fp32 graph on the calibration split, choose scales, and write
the int8 model in every form the target's runtime takes (Q/DQ ONNX always; the runtime's own files,
such as TensorRT's cache and layer precisions, by the runtime that wants them: `RuntimeCalibration`),
plus scales.json with every scale and why.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from edgekit.calibrate import equalize, observers, qdq, scales, select
from edgekit.calibrate.observers import TensorStats
from edgekit.calibrate.scales import QParams
from edgekit.data import Samples
from edgekit.errors import BadInput
from edgekit.metrics import Metric
from edgekit.plan import PrecisionPlan
from edgekit.targets import Target
from edgekit.util import write_json

FEW_SAMPLES = 16  # below this, scales are noisy: warn


@dataclass(frozen=True)
class CalibrationOptions:
    method: str = "auto"  # auto: every method of scales.METHODS tried, the one closest to fp32 kept
    percentile: float = 99.99
    samples: int | None = None  # at most this many calibration samples (default: the whole split)
    bias_correction: bool = True
    equalization: str = "auto"  # cross-layer equalization: auto (kept where it measures better), on, off

    def __post_init__(self) -> None:
        if self.equalization not in ("auto", "on", "off"):
            raise BadInput(f"--equalization must be auto, on or off, got '{self.equalization}'")
        if self.method not in ("auto", *scales.METHODS):
            raise BadInput(f"unknown calibration method '{self.method}' (known: auto, {', '.join(scales.METHODS)})")
        if not 50 < self.percentile <= 100:
            raise BadInput(f"--percentile must be in (50, 100], got {self.percentile}")
        if self.samples is not None and self.samples < 1:
            raise BadInput(f"--calibration-samples must be at least 1, got {self.samples}")


@dataclass(eq=False)  # compared by identity: a variant is one model and its statistics
class _Variant:
    """The fp32 model calibration may quantize (as exported, or equalized) and its statistics."""

    name: str
    model: object
    stats: dict[str, TensorStats]
    spread: dict[str, dict] = field(default_factory=dict)  # equalized: per pair, channel-range spread before/after


@dataclass
class QdqWriter:
    """Everything calibration learnt, kept to write Q/DQ models for any subset of the layers."""

    model: object  # the fp32 onnx.ModelProto
    params: dict[str, QParams]
    channel_means: dict[str, np.ndarray]
    sentinels: set[str]
    bias_correction: bool
    weight_bits: int = 8

    def write(self, int8_layers: list[str], out_path: Path) -> qdq.QdqSummary:
        import onnx

        inits = {i.name: onnx.numpy_helper.to_array(i) for i in self.model.graph.initializer}
        nodes = qdq.quantizable_layers(self.model)
        links = {name: inputs for name, inputs in qdq.int8_links(self.model, int8_layers, inits, self.sentinels).items()
                 if all(t in self.params for t in inputs)}
        needed = {t for name in int8_layers for t in qdq.activation_inputs(nodes[name], inits)}
        needed |= {t for inputs in links.values() for t in inputs}
        return qdq.write_qdq(self.model, int8_layers, {t: self.params[t] for t in needed if t in self.params}, out_path,
                             channel_means=self.channel_means, bias_correction=self.bias_correction, links=links,
                             weight_bits=self.weight_bits)


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
    writer: QdqWriter | None = None
    method: str = ""  # the range method used (the one auto chose)
    selection: dict[str, float] = field(default_factory=dict)  # "variant/method" → output error vs fp32
    equalization: dict = field(default_factory=dict)  # {asked, used, pairs}
    selection_metric: dict = field(default_factory=dict)  # with a named metric: {metric, drop_points per candidate}

    def rewrite(self, int8_layers: list[str], out_path: Path) -> qdq.QdqSummary:
        """Another Q/DQ model from the same calibration with only `int8_layers` in int8 (sensitivity
        analysis and mixed plans: no new observation)."""
        unknown = [name for name in int8_layers if name not in self.planned]
        if unknown:
            raise BadInput(f"cannot make {', '.join(unknown)} int8: not a quantizable layer of the model")
        return self.writer.write(int8_layers, Path(out_path))

    @property
    def int8_layers(self) -> list[str]:
        return [name for name, p in self.planned.items() if p == "int8"]


class RuntimeCalibration(Protocol):
    """What the target's runtime wants from calibration besides the Q/DQ model and scales.json: the
    target's Backend (`edgekit.backends.base`), passed in by the caller that knows both."""

    calibration_observes_all: bool  # every float tensor observed, not only what the int8 layers read

    def write_calibration_files(self, result: CalibrationResult, stats: dict[str, TensorStats],
                                options: CalibrationOptions, target: Target, out_dir: Path) -> dict[str, str]:
        """Its own files written into out_dir: {key: path relative to out_dir}."""
        ...


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
        warnings.append(f"only {len(samples)} calibration sample(s): scales may not represent the data (≥ {FEW_SAMPLES} advised)")
    return samples


def _check_stats(stats: dict[str, TensorStats], warnings: list[str]) -> None:
    for name, s in stats.items():
        if s.nonfinite:
            raise BadInput(f"tensor '{name}' holds {s.nonfinite} NaN/Inf values on the calibration data: "
                           "check the data (scaling, NaN pixels) or the model")
        if s.count and s.max - s.min == 0:
            warnings.append(f"tensor '{name}' is constant ({s.min:g}) on every calibration sample: its scale covers [{min(s.min, 0):g}, {max(s.max, 0):g}]")


def calibrate(onnx_path: Path, samples: Samples, target: Target, plan: PrecisionPlan, out_dir: Path,
              options: CalibrationOptions = CalibrationOptions(), *, metric: Metric | None = None,
              runtime: RuntimeCalibration | None = None) -> CalibrationResult:
    """Calibrate the fp32 ONNX model and write `model.int8.onnx` (Q/DQ), scales.json and, given the
    target's `runtime` (its Backend), the runtime's own files into out_dir."""
    import onnx

    started = time.perf_counter()
    warnings: list[str] = []
    model = onnx.load(str(onnx_path))
    planned = resolve_plan(plan, model)
    samples = _take(samples, options.samples, warnings)
    init_arrays = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    observe_all = runtime is not None and runtime.calibration_observes_all
    observed = None if observe_all else _observed_tensors(model, planned, init_arrays)
    variants = _observe(model, samples, observed, init_arrays, options, warnings)
    symmetric = symmetric_activations(target)
    demoted = _demotions(planned, plan, target, model, init_arrays, variants["plain"].stats)
    for name in demoted:
        planned[name] = "fp32" if "fp32" in target.precisions.supported else target.precisions.fast[0]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    qdq_path = out_dir / "model.int8.onnx"
    int8 = [name for name, p in planned.items() if p == "int8"]
    writers = _Writers(symmetric, options, target.quantization.weight_bits)
    candidates = sorted({(v, m) for v in variants if options.equalization != "on" or v == "equalized" or len(variants) == 1
                         for m in (scales.METHODS if options.method == "auto" else (options.method,))})
    named = metric if metric is not None and not metric.why else None  # a default metric leaves the choice to the error
    selection, drops = _select({f"{v}/{m}": writers.writer(variants[v], m) for v, m in candidates}, model, int8,
                               samples, named) if len(candidates) > 1 else ({}, {})
    variant_name, method = _best(selection, drops).split("/") if selection else candidates[0]
    variant = variants[variant_name]
    writer = writers.writer(variant, method)
    summary = writer.write(int8, qdq_path)
    result = CalibrationResult(qdq_path, planned, demoted, writer.params, summary, warnings, {"qdq_onnx": qdq_path.name},
                               len(samples), 0.0, writer, method, selection,
                               {"asked": options.equalization, "used": variant_name == "equalized",
                                "pairs": variants["equalized"].spread if "equalized" in variants else {}},
                               {"metric": named.name, "drop_points": drops} if drops else {})
    stats = variant.stats
    if variant_name == "equalized":
        onnx.save(variant.model, str(out_dir / "model.equalized.onnx"))
        result.files["equalized_onnx"] = "model.equalized.onnx"
    _write_scales(out_dir / "scales.json", result, stats, options, symmetric, samples)
    result.files["scales"] = "scales.json"
    if runtime is not None:
        result.files.update(runtime.write_calibration_files(result, stats, options, target, out_dir))
    result.seconds = time.perf_counter() - started
    return result


def _observed_tensors(model, planned: dict[str, str], init_arrays: dict) -> list[str]:
    """What int8 layers read (and the joins and pools between them)."""
    layers = qdq.quantizable_layers(model)
    wanted = [name for name, p in planned.items() if p == "int8"]
    return sorted(({t for name in wanted for t in qdq.activation_inputs(layers[name], init_arrays)}
                   | {t for inputs in qdq.int8_links(model, wanted, init_arrays).values() for t in inputs})
                  & set(observers.float_tensors(model)))


def _observe(model, samples: Samples, observed: list[str] | None, init_arrays: dict, options: CalibrationOptions,
             warnings: list[str]) -> dict[str, _Variant]:
    """The model's statistics on the calibration samples ("plain"), and the cross-layer equalized
    model's ("equalized") unless equalization is off or finds nothing to equalize."""
    variants = {"plain": _Variant("plain", model, observers.collect(model, samples, observed))}
    _check_stats(variants["plain"].stats, warnings)
    if options.equalization == "off":
        return variants
    pairs = equalize.find_pairs(model, init_arrays)
    if pairs:
        maxima = observers.channel_maxima(model, samples, equalize.clipped_outputs(model, pairs))
        eq_model, spread = equalize.equalize(model, pairs, maxima)
        variants["equalized"] = _Variant("equalized", eq_model, observers.collect(eq_model, samples, observed), spread)
    elif options.equalization == "on":
        warnings.append("--equalization on: no conv → (ReLU | clip) → conv chain to equalize in this model")
    return variants


def _demotions(planned: dict[str, str], plan: PrecisionPlan, target: Target, model, init_arrays: dict,
               stats: dict[str, TensorStats]) -> dict[str, str]:
    """Layers planned int8 that stay float, and why: products of two activations the target runs in
    float (unless the plan names them), and layers whose input is not a float activation or holds sentinels."""
    layers = qdq.quantizable_layers(model)
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
    return demoted


class _Writers:
    """The QdqWriter of each calibration candidate (a model variant and a range method), the scales
    of each computed once however often it is written."""

    def __init__(self, symmetric: bool, options: CalibrationOptions, weight_bits: int):
        self.symmetric, self.options, self.weight_bits = symmetric, options, weight_bits
        self._params: dict[tuple[str, str], dict[str, QParams]] = {}

    def params(self, variant: _Variant, method: str) -> dict[str, QParams]:
        key = (variant.name, method)
        if key not in self._params:
            symmetric, percentile = self.symmetric, self.options.percentile
            self._params[key] = {
                name: scales.qparams(*scales.activation_range(s, method, symmetric=symmetric, percentile=percentile),
                                     symmetric=symmetric, method=method)
                for name, s in variant.stats.items()}
        return self._params[key]

    def writer(self, variant: _Variant, method: str) -> QdqWriter:
        return QdqWriter(variant.model, self.params(variant, method),
                         {n: s.channel_mean for n, s in variant.stats.items() if s.channel_mean is not None},
                         {n for n, s in variant.stats.items() if s.sentinel}, self.options.bias_correction,
                         self.weight_bits)


def _best(selection: dict[str, float], drops: dict[str, float]) -> str:
    """The candidate with the smallest metric drop (when a metric was named), then the smallest output error."""
    rank = (lambda name: (round(drops[name], 9), selection[name])) if drops else selection.get
    return min(selection, key=rank)


def _select(writers: dict[str, QdqWriter], model, int8: list[str], samples: Samples,
            metric: Metric | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Each candidate written and run (see edgekit.calibrate.select): its int8 model's output error
    against the original fp32 model's, on the calibration split; the smallest wins. With a metric the
    user named, also each candidate's drop in that metric (in points), which decides first."""
    feeds = select.feeds_of(samples)
    reference = select.all_outputs(model, feeds)
    first = [r[None] for r in np.asarray(reference[0], np.float64)]
    labels = None if samples.labels is None else samples.labels[: len(feeds)]
    source = metric(reference, labels, reference) if metric is not None else None
    errors, drops = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, writer) in enumerate(writers.items()):
            path = Path(tmp) / f"candidate{i}.onnx"
            writer.write(int8, path)
            if metric is None:
                errors[name] = select.output_error(first, path, feeds)
                continue
            outputs = select.all_outputs(path, feeds)
            errors[name] = select.relative_error(reference[0], outputs[0])
            drops[name] = metric.drop(source, metric(outputs, labels, reference))
    return errors, drops


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
        "method": result.method, "asked": options.method,
        "selection": {"output_error_vs_fp32": result.selection, "samples": min(len(samples), select.MAX_SAMPLES),
                      "split": "calibration", **result.selection_metric} if result.selection else None,
        "percentile": options.percentile if result.method == "percentile" else None,
        "activations": "symmetric int8" if symmetric else "asymmetric uint8",
        "weights": f"per-channel symmetric int8, narrow range ±{scales.weight_qmax(result.writer.weight_bits)}"
                   + (" (7-bit: the target's int8 dot product saturates 8-bit weights)" if result.writer.weight_bits == 7 else ""),
        "bias_correction": options.bias_correction,
        "equalization": result.equalization,
        "calibration": {"source": samples.source, "samples": len(samples), "sha256": samples.sha256()},
        "planned": result.planned, "demoted": result.demoted, "warnings": result.warnings,
        "tensors": tensors, "weight_scales": result.summary.weights, "bias_shift": result.summary.bias_corrected,
    })

