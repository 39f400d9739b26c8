"""OpenVINO: ONNX → IR (.xml/.bin), compiled for the target's device (CPU here; GPU/NPU on Intel parts).

The IR is plain OpenVINO: it loads in `openvino.Core().compile_model("model.xml", "CPU")` without
edgekit. Per-layer times and the kernels actually chosen come from OpenVINO's performance counters.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from edgekit.backends.base import (
    Artifact,
    Availability,
    BackendDefaults,
    BuildContext,
    Executed,
    LayerTime,
    UnitRun,
    UnitTimes,
)
from edgekit.errors import BadInput, Failure, require, runtime_message
from edgekit.plan import PrecisionPlan
from edgekit.targets import Target

# edgekit precision → OpenVINO's execution precision hint. fp32 is asked for explicitly: on CPUs
# with AMX or AVX512-BF16 OpenVINO would otherwise run bf16 by default.
INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f16"}
# OpenVINO's runtime precisions → edgekit's (u8/i8 inputs: an int8 kernel).
RUNTIME_PRECISION = {"u8": "int8", "i8": "int8", "f32": "fp32", "f16": "fp16", "bf16": "bf16"}
UNIT_WARMUP = 10  # a cost-model unit's runs before the profiled ones
UNIT_QUANTILE = 0.25  # of a unit's per-run profiled totals


def _ov():
    return require("openvino", "openvino")


# Runtime layer types that carry a model's weights, and the IR ops they come from.
WEIGHTED_RUNTIME = ("Convolution", "Deconvolution", "FullyConnected", "MatMul")
WEIGHTED_IR = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul")


class OpenVINOEngine:
    def __init__(self, compiled, request, per_layer_factory, model=None):
        self._compiled = compiled
        self._request = request
        self._per_layer_factory = per_layer_factory
        self._model = model  # the IR as read (ops named after the ONNX nodes), for `executed`

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        # share_inputs avoids a copy per call; outputs are copied, the request reuses their buffers.
        result = self._request.infer(feed, share_inputs=True, share_outputs=True)
        return [np.array(result[out]) for out in self._compiled.outputs]

    def layer_times(self, feed: dict[str, np.ndarray], runs: int) -> list[LayerTime]:
        """Median per-layer time over `runs`, from a second compile with performance counters on
        (kept apart so the counters never slow the latency measurement)."""
        request = self._per_layer_factory().create_infer_request()
        request.infer(feed)
        per_layer: dict[str, tuple[str, str, list[float]]] = {}
        for _ in range(runs):
            request.infer(feed)
            for info in request.profiling_info:
                if info.status.name == "EXECUTED":
                    entry = per_layer.setdefault(info.node_name, (info.node_type, info.exec_type, []))
                    entry[2].append(info.real_time.total_seconds() * 1e3)
        return [LayerTime(name, op, exec_type, float(np.median(times))) for name, (op, exec_type, times) in per_layer.items()]

    def executed(self, feed: dict[str, np.ndarray], layers: list[str]) -> dict[str, Executed]:
        """Read the compiled model back: each runtime layer's precision, the ONNX layers fused into it
        (originalLayersNames), and the kernel its performance counters name."""
        compiled = self._per_layer_factory()
        request = compiled.create_infer_request()
        request.infer(feed)
        kernels = {info.node_name: info.exec_type for info in request.profiling_info}
        wanted = set(layers)
        found: dict[str, Executed] = {}
        unnamed: list = []  # weighted runtime layers no wanted ONNX layer's name reached
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) in ("Const", "Input", "Output", "Reorder"):
                continue
            runtime_name = op.get_friendly_name()
            precision = RUNTIME_PRECISION.get(info["runtimePrecision"].astype(str), info["runtimePrecision"].astype(str))
            claimed = False
            for original in info["originalLayersNames"].astype(str).split(","):
                layer = _onnx_layer(original, wanted)
                if layer is not None and layer not in found:
                    found[layer] = Executed(precision, runtime_name, kernels.get(runtime_name, ""))
                    claimed = True
            if not claimed and info["layerType"].astype(str) in WEIGHTED_RUNTIME:
                unnamed.append((op, precision, runtime_name))
        if self._model is not None and wanted - set(found):
            found.update(self._by_shape(wanted - set(found), unnamed, kernels))
        return found

    def _by_shape(self, missing: set[str], unnamed: list, kernels: dict) -> dict[str, Executed]:
        """Layers whose name OpenVINO's transformations dropped (a convolution folded with the scales
        around it is renamed Multiply_N): matched to the weighted runtime layers no name claimed by their
        input and output shapes, in graph order among layers of the same shapes."""
        def shapes(op) -> tuple[str, str]:
            return str(op.input(0).get_partial_shape()), str(op.output(0).get_partial_shape())

        waiting: dict[tuple[str, str], list[str]] = {}
        for op in self._model.get_ordered_ops():
            if op.get_type_name() in WEIGHTED_IR:
                layer = _onnx_layer(op.get_friendly_name(), missing)
                if layer is not None and layer not in {name for names in waiting.values() for name in names}:
                    waiting.setdefault(shapes(op), []).append(layer)
        matched = {}
        for op, precision, runtime_name in unnamed:
            queue = waiting.get(shapes(op))
            if queue:
                matched[queue.pop(0)] = Executed(precision, runtime_name, kernels.get(runtime_name, ""))
        return matched


def _onnx_layer(original: str, wanted: set[str]) -> str | None:
    """The ONNX layer an OpenVINO op came from: the frontend names its ops NODE/WithoutBiases, NODE/...,
    and ONNX node names may hold '/' themselves (torch's TorchScript exporter: /body/body.0/Conv), so the
    longest '/'-prefix that is a wanted layer."""
    parts = original.split("/")
    for end in range(len(parts), 0, -1):
        name = "/".join(parts[:end])
        if name in wanted:
            return name
    return None


def profile_unit(model, target: Target, unit: UnitRun) -> UnitTimes:
    """A cost-model unit compiled as the backend loads an IR (latency hint, one stream, the target's
    cores, f32 unless fp16), with performance counters: per run the sum of the unit's own executed
    kernels; the UNIT_QUANTILE of those sums over the runs after UNIT_WARMUP runs. The lower quantile
    (not the median) keeps bursts of other load on the machine out of the latency table."""
    ov = _ov()
    core = ov.Core()
    device = target.backend.options.get("device", "CPU")
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f16" if unit.precision == "fp16" else "f32"}
    if device == "CPU":
        config["INFERENCE_NUM_THREADS"] = str(target.cores)
    ov_model = core.read_model(model.SerializeToString(), b"")
    request = core.compile_model(ov_model, device, {**config, "PERF_COUNT": "YES"}).create_infer_request()
    for _ in range(UNIT_WARMUP):
        request.infer(unit.feed)
    totals, kernels = [], []
    for _ in range(unit.runs):
        request.infer(unit.feed)
        own = [i for i in request.profiling_info if i.status.name == "EXECUTED" and unit.own(i.node_name, i.node_type)]
        totals.append(sum(i.real_time.total_seconds() for i in own) * 1e3)
        kernels = [f"{i.node_type}:{i.exec_type}" for i in own]
    wall_ms = None
    if unit.wall:
        plain = core.compile_model(ov_model, device, config).create_infer_request()
        times = []
        for i in range(UNIT_WARMUP + 10 * unit.runs):
            start = time.perf_counter()
            plain.infer(unit.feed, share_inputs=True, share_outputs=True)
            if i >= UNIT_WARMUP:
                times.append((time.perf_counter() - start) * 1e3)
        wall_ms = float(np.percentile(times, UNIT_QUANTILE * 100))
    return float(np.percentile(totals, UNIT_QUANTILE * 100)), wall_ms, kernels


class OpenVINOBackend(BackendDefaults):
    name = "openvino"
    suffixes = (".xml",)

    def profile_unit(self, model, target: Target, unit: UnitRun) -> UnitTimes:
        """OpenVINO's own performance counters, without an Engine (see `profile_unit` above)."""
        return profile_unit(model, target, unit)

    def available(self, target: Target) -> Availability:
        try:
            ov = _ov()
        except Exception as err:
            return Availability(False, False, str(err))
        device = target.backend.options.get("device", "CPU")
        devices = ov.Core().available_devices
        versions = {"openvino": ov.get_version()}
        if not any(d.split(".")[0] == device for d in devices):
            # The IR is device-independent: build it here, run it where the device is.
            return Availability(True, False, f"OpenVINO device '{device}' is not present here (found: {', '.join(devices)})", versions)
        return Availability(True, True, "", versions)

    def build(self, *, onnx_path: Path, plan: PrecisionPlan, target: Target, out_dir: Path,
              context: BuildContext | None = None) -> Artifact:
        ov = _ov()
        floats = {plan.default, *plan.layers.values()} - {"int8"}
        if len(floats) > 1:
            raise BadInput(f"OpenVINO runs one float precision per model (its inference precision hint); the plan mixes {sorted(floats)}")
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as err:
            raise Failure(f"OpenVINO could not convert {onnx_path.name}: {runtime_message(err)}") from err
        xml = Path(out_dir) / "model.xml"
        # int8 layers come as Q/DQ pairs, which OpenVINO's low-precision transformations turn into int8 kernels.
        ov.save_model(model, str(xml), compress_to_fp16=plan.float_precision == "fp16")
        device = target.backend.options.get("device", "CPU")
        return Artifact(self.name, xml, (xml, xml.with_suffix(".bin")), plan.label,
                        {"device": device, "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[plan.float_precision]})

    def artifact_from_file(self, path: Path) -> Artifact:
        if not path.with_suffix(".bin").is_file():
            raise BadInput(f"{path}: the IR's weights file {path.with_suffix('.bin').name} is missing beside it")
        try:  # checked here: OpenVINO would try every frontend on it, and TensorFlow's logs to stderr
            root = ElementTree.parse(path).getroot()
        except ElementTree.ParseError as err:
            raise BadInput(f"OpenVINO cannot load {path.name}: not a valid IR ({err})") from err
        if root.tag != "net":
            raise BadInput(f"OpenVINO cannot load {path.name}: not an IR (root element <{root.tag}>, expected <net>)")
        return Artifact(self.name, path, (path, path.with_suffix(".bin")), "fp32", {})

    def load(self, artifact: Artifact, *, target: Target, threads: int) -> OpenVINOEngine:
        ov = _ov()
        core = ov.Core()
        device = artifact.options.get("device") or target.backend.options.get("device", "CPU")
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if device == "CPU":
            config["INFERENCE_NUM_THREADS"] = str(threads)
        hint = artifact.options.get("INFERENCE_PRECISION_HINT")
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        try:
            model = core.read_model(str(artifact.path))
            compiled = core.compile_model(model, device, config)
        except Exception as err:  # OpenVINO raises RuntimeError for a corrupt or mismatched IR
            raise BadInput(f"OpenVINO cannot load {artifact.path.name}: {runtime_message(err)}") from err
        return OpenVINOEngine(compiled, compiled.create_infer_request(),
                              lambda: core.compile_model(model, device, {**config, "PERF_COUNT": "YES"}), model)


BACKEND = OpenVINOBackend()
