"""Per-layer int8 sensitivity: what making each layer int8 costs in accuracy and gains in latency on
the target, saved as `sensitivity.json` for `--precision mixed` and the precision search.

Accuracy, one layer at a time: that layer int8, every other layer fp32 (all written from one
calibration, `CalibrationResult.rewrite`: no new observation), on the validation split; the scales
come from the calibration split and the test split is never seen. The models run in ONNX Runtime with
graph optimizations off, so QuantizeLinear/DequantizeLinear execute as written: the number is the
layer's own quantization error, the same on any machine, and known for targets that are not here.
Top-1 on a few hundred samples moves in steps of one sample, so a continuous measure goes with it:
the normalised squared error of the first output against fp32's.

Latency, on the target with its own runtime: a layer's time in the fp32 engine minus its time in the
all-int8 engine, medians of the runtime profiler, joined through the runtime layer each ONNX layer
became (`Engine.executed`). The all-int8 engine is what a mixed plan mostly is; an engine with one
int8 layer would charge that layer the quantize/dequantize at both its ends, which int8 neighbours
share. Fusions move time between layers (a requantization fused into the convolution before it): the
runtime names are recorded, and time no quantizable layer claims is `unattributed_ms`. A target that
cannot run here gets its gains from the cost model, every latency labelled `predicted`.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import graph
from edgekit.backends.base import calibration_runtime, get_backend
from edgekit.calibrate import qdq, select
from edgekit.calibrate.run import CalibrationOptions, CalibrationResult, calibrate
from edgekit.data import Splits
from edgekit.errors import BadInput, MissingRuntime, require
from edgekit.measurer import LOCAL, Measurer
from edgekit.metrics import Metric, stack_outputs
from edgekit.plan import PrecisionPlan
from edgekit.precision.layer_latency import TwoEngines, aliases_of, measure_layers, predict_layers
from edgekit.precision.timing import Timing
from edgekit.profile import ProfileSettings
from edgekit.targets import Target
from edgekit.util import sha256_file, write_json

FILE = "sensitivity.json"
VERSION = 1
VERDICTS = ("int8", "harmful", "slower", "float")
# harmful: top-1 loss (or, without labels, disagreement with fp32) above 0.5 pt and above one sample
# (a single flip is the sample's noise, not the layer's); or an output error above 1e-2 (SQNR under
# 20 dB); or an outlier: 10x the median layer's error and above 1e-3 (30 dB: below, int8 is benign).
TOP1_LOSS_PT = 0.5
ERROR_CEILING = 1e-2
ERROR_OUTLIER = 10.0
ERROR_FLOOR = 1e-3
# slower: int8 slower than fp32 by more than the spread between profiling rounds (the middle three of
# five: one round can collide with other load), 5 % of the layer's fp32 time, and the profiler's
# microsecond resolution.
NOISE_FRACTION = 0.05
NOISE_FLOOR_MS = 0.001


def float_precision(target: Target) -> str:
    """The precision the layers that stay out of int8 run in, and what int8 is weighed against: the
    target's float baseline (fp16 on a GPU target such as a Jetson, else fp32 where the target has it)."""
    if target.float_baseline is not None:
        return target.float_baseline
    raise BadInput(f"target {target.name} runs no float precision ({', '.join(target.precisions.supported)}): "
                   "a mixed plan has nothing to keep int8-sensitive layers in; use --precision int8")


def check_target(target: Target) -> str:
    """The target can run a mixed plan: it has int8 and a float precision (returned)."""
    if "int8" not in target.precisions.supported:
        raise BadInput(f"target {target.name} does not run int8 (it runs: {', '.join(target.precisions.supported)}): "
                       "int8 sensitivity and --precision mixed need it")
    return float_precision(target)


# ---- accuracy: one layer int8 at a time, ONNX Runtime, validation split -------------------------

def _outputs(path: Path, feeds: list[dict]) -> list[np.ndarray]:
    """Every output over the feeds, [N, ...] each, with Q/DQ run as written (no fusions)."""
    return select.all_outputs(Path(path), feeds)


def _compare(references: list[np.ndarray], outputs: list[np.ndarray], labels: np.ndarray | None,
             metric: Metric | None = None, raw_labels: np.ndarray | None = None) -> dict:
    """Output error (sum of squared differences over the sum of squared fp32 values), top-1
    agreement with fp32 and top-1 accuracy (classifiers: more than one output value per sample),
    and the task metric when one is given."""
    n = len(references[0])
    ref = np.asarray(references[0], np.float64).reshape(n, -1)
    ours = np.asarray(outputs[0], np.float64).reshape(n, -1)
    result = {"output_error": select.relative_error(ref, ours),
              "agreement": None, "top1": None}
    if ref.shape[1] > 1:
        result["agreement"] = float((ours.argmax(1) == ref.argmax(1)).mean())
        if labels is not None:
            result["top1"] = float((ours.argmax(1) == labels).mean())
    if metric is not None:
        result["metric"] = metric(outputs, raw_labels, references)
    return result


def _labels(splits: Splits) -> np.ndarray | None:
    """Class labels (one per sample) for top-1; labels of another kind (masks, boxes) go to the metric only."""
    labels = splits.validation.labels
    if labels is None or np.asarray(labels).reshape(len(splits.validation), -1).shape[1] != 1:
        return None
    return np.asarray(labels).reshape(len(splits.validation), -1)[:, 0].astype(np.int64)


# ---- verdicts -------------------------------------------------------------------------------

def _harm_by_metric(accuracy: dict, metric: Metric, samples: int) -> list[str]:
    """A named metric's drop from fp32 above 0.5 points (and above one sample's worth for top1/agreement)."""
    limit = max(TOP1_LOSS_PT, 100.0 / samples) if metric.name in ("top1", "agreement") else TOP1_LOSS_PT
    drop = accuracy["metric_drop"]
    return [f"{metric.name} {drop:.3g} points below fp32 (> {limit:.3g})"] if drop > limit else []


def _harm(accuracy: dict, samples: int, median_error: float) -> list[str]:
    """The default rules: top-1 loss (or disagreement) and the output error (thresholds above)."""
    one_sample = 100.0 / samples
    harmful = []
    if accuracy["top1_loss_pt"] is not None and accuracy["top1_loss_pt"] > max(TOP1_LOSS_PT, one_sample):
        harmful.append(f"top-1 {accuracy['top1_loss_pt']:.2f} pt below fp32")
    elif accuracy["top1_loss_pt"] is None and accuracy["agreement"] is not None and \
            (1 - accuracy["agreement"]) * 100 > max(TOP1_LOSS_PT, one_sample):
        harmful.append(f"top-1 agrees with fp32 on {accuracy['agreement']:.1%} only")
    error = accuracy["output_error"]
    if error > ERROR_CEILING:
        harmful.append(f"output error {error:.2g} > {ERROR_CEILING:g}")
    elif error > ERROR_FLOOR and error > ERROR_OUTLIER * median_error:
        harmful.append(f"output error {error:.2g}, over {ERROR_OUTLIER:g}x the median layer's ({median_error:.2g})")
    return harmful


def _verdict(accuracy: dict, latency: dict, samples: int, median_error: float,
             metric: Metric | None = None) -> tuple[str, str]:
    """harmful, slower or int8, and why (the thresholds above; accuracy first: a fast wrong layer is no gain).
    A metric the user named decides harm alone: its drop from fp32 above 0.5 points (and one sample's worth
    for top1/agreement); the default metric keeps the top-1 and output-error rules."""
    harmful = _harm_by_metric(accuracy, metric, samples) if metric is not None and not metric.why else \
        _harm(accuracy, samples, median_error)
    if harmful:
        return "harmful", "; ".join(harmful)
    gain = latency.get("gain_ms")
    if gain is None:
        return "int8", "accuracy holds; no time of its own in both engines (fused into another runtime layer)"
    if latency["kind"] == "predicted":
        return ("slower", f"int8 predicted {-gain * 1e3:.1f} µs slower") if gain < 0 else \
            ("int8", f"accuracy holds; int8 predicted {gain * 1e3:.1f} µs faster")
    noise = max(latency["noise_ms"], NOISE_FRACTION * latency["fp32_ms"], NOISE_FLOOR_MS)
    if gain < -noise:
        return "slower", f"int8 measured {-gain * 1e3:.1f} µs slower (noise {noise * 1e3:.1f} µs)"
    return "int8", f"accuracy holds; int8 {'saves' if gain >= 0 else 'costs'} {abs(gain) * 1e3:.1f} µs (noise {noise * 1e3:.1f} µs)"


# ---- the analysis ---------------------------------------------------------------------------

@dataclass(frozen=True)
class HowToAnalyse:
    """How the analysis calibrates, builds and times: the calibration options, the runtime (default the
    target's), where engines are timed (`measurer`: here, or on a device through its agent), and the
    task metric that judges each layer (None: top-1 and output error)."""

    options: CalibrationOptions = CalibrationOptions()
    threads: int | None = None
    backend_name: str | None = None
    settings: ProfileSettings = ProfileSettings()
    measurer: Measurer = LOCAL
    metric: Metric | None = None


@dataclass(frozen=True)
class _Model:
    """The model under analysis: its file, its quantizable layers and their MACs, the calibration."""

    onnx_path: Path
    proto: object
    nodes: dict
    macs: dict[str, int]
    calibration: CalibrationResult
    candidates: list[str]


def analyse(onnx_path: Path, splits: Splits, target: Target, out_dir: Path, *, how: HowToAnalyse = HowToAnalyse(),
            calibration: CalibrationResult | None = None) -> dict:
    """Measure every quantizable layer's int8 sensitivity and write `out_dir/sensitivity.json`.
    `calibration`: an all-int8 calibration already made (deploy's), else one is made here
    (PrecisionPlan("int8") on the calibration split, files in out_dir)."""
    import onnx

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    float_p = check_target(target)
    if calibration is None:
        calibration = calibrate(onnx_path, splits.calibration, target, PrecisionPlan("int8"), out_dir, how.options,
                                runtime=calibration_runtime(target))
    proto = onnx.load(str(onnx_path), load_external_data=False)
    nodes = qdq.quantizable_layers(proto)
    table = {layer.name: layer for layer in graph.layer_table(onnx_path)}
    model = _Model(onnx_path, proto, nodes, {name: table[name].macs if name in table else 0 for name in nodes},
                   calibration, [name for name in nodes if calibration.planned.get(name) == "int8"])
    feeds = [splits.validation.sample(i) for i in range(len(splits.validation))]
    labels = _labels(splits)
    backend_name = how.backend_name or target.backend.name
    judged = functools.partial(_compare, metric=how.metric, raw_labels=splits.validation.labels, labels=labels)
    with tempfile.TemporaryDirectory(prefix="edgekit-sensitivity-") as tmp:
        folder = Path(tmp)
        reference = _outputs(onnx_path, feeds)
        fp32 = judged(reference, reference)
        accuracy = {}
        for name in model.candidates:
            calibration.rewrite([name], folder / f"{len(accuracy)}.onnx")
            accuracy[name] = judged(reference, _outputs(folder / f"{len(accuracy)}.onnx", feeds))
        all_int8 = folder / "all.int8.onnx"
        calibration.rewrite(model.candidates, all_int8)
        whole = judged(reference, _outputs(all_int8, feeds))
        latency, versions, engine = _latency(model, target, backend_name, how, float_p, all_int8, feeds[0], folder)
        if engine is not None:
            on_target = stack_outputs([[np.asarray(o) for o in engine.run(feed)] for feed in feeds])
            whole["on_target"] = judged(reference, on_target)
    layers = _layer_records(model, latency, accuracy, fp32, len(feeds), how.metric)
    latency.pop("layers")
    method = getattr(calibration, "method", "") or next((p.method for p in calibration.params.values()), None)
    result = {
        "version": VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "target": {"name": target.name, "device": target.device},
        "backend": backend_name,
        "versions": versions,
        "model": {"file": onnx_path.name, "sha256": sha256_file(onnx_path)},
        "calibration": {"method": method, "samples": calibration.samples, "bias_correction": how.options.bias_correction,
                        "demoted": calibration.demoted},
        "splits": {k: len(getattr(splits, k)) for k in ("calibration", "validation", "test")},
        "float_precision": float_p,
        "accuracy": _accuracy_record(fp32, whole, len(feeds), labels is not None, how.metric),
        "latency": {**latency, "per_layer": f"runtime profiler medians over rounds: {float_p} engine minus all-int8 engine"
                    if latency["kind"] == "measured" else f"roofline per layer: {float_p} rate minus int8 rate",
                    "baseline": f"{float_p} (fp32_ms holds the {float_p} time)" if float_p != "fp32" else "fp32"},
        "thresholds": {"top1_loss_pt": TOP1_LOSS_PT, "error_ceiling": ERROR_CEILING, "error_outlier": ERROR_OUTLIER,
                       "error_floor": ERROR_FLOOR, "noise_fraction": NOISE_FRACTION, "noise_floor_ms": NOISE_FLOOR_MS},
        "layers": layers,
        "summary": {v: sum(r["verdict"] == v for r in layers.values()) for v in VERDICTS},
    }
    write_json(out_dir / FILE, result)
    return result


def _latency(model: _Model, target: Target, backend_name: str, how: HowToAnalyse, float_p: str, all_int8: Path,
             feed: dict, folder: Path) -> tuple[dict, dict, object | None]:
    """Each layer's fp32 and int8 times, measured where `how.measurer` times if the runtime can build
    and load them here, else the roofline's; the runtime's versions; the all-int8 engine when built."""
    versions, why_not = {}, ""
    try:
        backend = get_backend(backend_name)
    except MissingRuntime as err:
        backend, why_not = None, str(err)
    if backend is not None:
        availability = backend.available(target)
        versions = availability.versions
        why_not = "" if how.measurer.can_analyse(target, availability) else \
            (availability.reason or "the device is not this machine")
    if why_not or not model.candidates:
        return (predict_layers(model.onnx_path, target, float_p, model.candidates, model.nodes,
                         why_not or "no layer can be int8"), versions, None)
    timing = Timing(target, backend, how.threads or target.cores, feed, how.settings)
    latency = measure_layers(timing, how.measurer, TwoEngines(model.onnx_path, all_int8, float_p, model.candidates),
                       aliases_of(model.proto, model.nodes), model.macs, folder)
    return latency, versions, latency.pop("engines")["int8"]


def _layer_records(model: _Model, latency: dict, accuracy: dict, fp32: dict, samples: int, metric: Metric | None) -> dict:
    """Per layer: op, MACs, latency, accuracy and the verdict with its reason."""
    errors = [accuracy[name]["output_error"] for name in model.candidates]
    median_error = float(np.median(errors)) if errors else 0.0
    layers = {}
    for name, node in model.nodes.items():
        record = {"op": node.op_type, "macs": model.macs[name], "latency": latency["layers"][name]}
        if name in accuracy:
            acc = accuracy[name]
            acc["top1_loss_pt"] = None if acc["top1"] is None else round((fp32["top1"] - acc["top1"]) * 100, 4)
            if metric is not None:
                acc["metric_drop"] = round(metric.drop(fp32["metric"], acc["metric"]), 6)
            record["accuracy"] = acc
            record["verdict"], record["reason"] = _verdict(acc, record["latency"], samples, median_error, metric)
        else:
            record["accuracy"] = None
            record["verdict"] = "float"
            record["reason"] = model.calibration.demoted.get(name, "kept float by the calibration plan")
        layers[name] = record
    return layers


def _accuracy_record(fp32: dict, whole: dict, samples: int, labelled: bool, metric: Metric | None) -> dict:
    return {
        "evaluated_with": f"onnxruntime {require('onnxruntime', 'onnxruntime').__version__} (CPU, Q/DQ ONNX run "
                          "as written, graph optimizations off), one layer int8 at a time",
        "split": "validation", "samples": samples, "labels": labelled,
        "output_error": "sum of squared differences of the first output from fp32's over the sum of its squares",
        "fp32_top1": fp32["top1"], "all_int8": whole,
        **({"metric": {**metric.describe(), "fp32": fp32["metric"],
                       "decides": "harm" if not metric.why else "reported; top-1 and output-error rules decide"}}
           if metric is not None else {})}


def mixed_plan(sensitivity: dict) -> PrecisionPlan:
    """int8 for the layers whose verdict is `int8`, the float precision for every other."""
    float_p = sensitivity.get("float_precision", "fp32")
    return PrecisionPlan(float_p, {name: "int8" if r["verdict"] == "int8" else float_p
                                   for name, r in sensitivity["layers"].items()})


def load_sensitivity(path: Path, onnx_path: Path | None = None) -> dict:
    """Read a sensitivity.json back; with `onnx_path`, check it was measured on that very model."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise BadInput(f"cannot read {path}: {err.strerror}") from err
    except json.JSONDecodeError as err:
        raise BadInput(f"{path} is not valid JSON ({err.msg}, line {err.lineno})") from err
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("layers"), dict):
        raise BadInput(f"{path} is not an edgekit sensitivity file (version {VERSION})")
    bad = [name for name, r in data["layers"].items() if r.get("verdict") not in VERDICTS]
    if bad:
        raise BadInput(f"{path}: layer {bad[0]} has no valid verdict ({', '.join(VERDICTS)})")
    if onnx_path is not None and sha256_file(Path(onnx_path)) != data["model"]["sha256"]:
        raise BadInput(f"{path} was measured on another model than {Path(onnx_path).name} (sha256 differs)")
    return data
