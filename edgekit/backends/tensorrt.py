"""TensorRT (Jetson): the engine is built from an explicitly quantized (Q/DQ) ONNX on the device.

An engine is specific to the GPU and the TensorRT version that build it, so edgekit builds it only
where TensorRT and the device are. Elsewhere it does everything up to it, for the TensorRT version of
the target's JetPack: the ONNX TensorRT parses (`model.trt.onnx`), checked against TensorRT's Q/DQ
rules and that version's operator matrix, typed for a strongly typed network from TensorRT 10.1 on
(explicit quantization only: nothing needs a calibration cache); and `tensorrt/trtexec.sh`, the
trtexec line equal to the Python build, checked for flags that version takes. The accuracy check runs
that same ONNX in ONNX Runtime with graph optimizations off (the Q/DQ and fp16 arithmetic as written),
not TensorRT itself.

This module is the backend; its parts: tensorrt_versions (what each TensorRT version takes),
tensorrt_source (the ONNX checked against TensorRT's rules), tensorrt_types (the explicit fp16 casts),
tensorrt_spec (the build's flags and its trtexec line), tensorrt_dla (DLA cores and GPU fallback),
tensorrt_calibration (the cache and layer precisions calibration writes, for older tools),
tensorrt_device (the Python API build and the engine, where TensorRT and a GPU are) and
tensorrt_legacy (the weakly typed build of TensorRT < 10.1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.backends import tensorrt_calibration, tensorrt_types
from edgekit.backends import tensorrt_versions as versions
from edgekit.backends.base import Artifact, Availability, BackendDefaults, BuildContext, Executed, LayerTime
from edgekit.backends.onnxruntime import _options, _ort
from edgekit.backends.tensorrt_device import NOT_HERE, TensorRTEngine, _tensorrt, build_engine
from edgekit.backends.tensorrt_dla import dla_core, gpu_fallback
from edgekit.backends.tensorrt_source import MIN_QDQ_OPSET, check_source, fold_int32_dequantize, write_source
from edgekit.backends.tensorrt_spec import ENGINE, FOLDER, SOURCE, BuildSpec, build_spec, trtexec_script
from edgekit.calibrate import trt_cache
from edgekit.calibrate.qdq import QUANTIZABLE
from edgekit.errors import BadInput, MissingRuntime, require, runtime_message
from edgekit.plan import PrecisionPlan
from edgekit.targets import Target
from edgekit.util import atomic_write_text

if TYPE_CHECKING:
    from edgekit.calibrate.observers import TensorStats
    from edgekit.calibrate.run import CalibrationOptions, CalibrationResult

# What other modules and tests reach through this module (the pieces live in tensorrt_*.py).
__all__ = ["BACKEND", "ENGINE", "FOLDER", "MIN_QDQ_OPSET", "NOT_HERE", "SOURCE",
           "BuildSpec", "QdqTwin", "TensorRTBackend", "TensorRTEngine", "build_engine", "build_spec", "check_source",
           "fold_int32_dequantize"]


def _calibration_files(out_dir: Path, planned: dict[str, str], target: Target, context: BuildContext | None) -> dict | None:
    """edgekit's calibration in TensorRT's own files, for older tools (implicit quantization): written
    when calibrating for a TensorRT target (tensorrt_calibration), made here from scales.json otherwise,
    each read back. The build itself never needs them: the Q/DQ model carries its scales. None where
    there is no calibration (a Q/DQ model sent to the device's agent)."""
    folder = out_dir / FOLDER
    cache, flags = folder / "calibration.cache", folder / "layer_precisions.txt"
    version = versions.of(target)
    if not cache.is_file():
        scales = context.scales if context and context.scales else out_dir / "scales.json"
        if not Path(scales).is_file():
            return None
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


def _source_line(source: dict, spec: BuildSpec) -> str:
    line = f"{SOURCE} (what TensorRT parses): ONNX checker passed, opset {source['opset']}"
    if spec.int8:
        line += (f"; TensorRT's Q/DQ rules hold on {source['qdq_nodes']} Q/DQ nodes (symmetric int8, zero point 0, "
                 f"{source['per_channel_weights']} weights per output channel)")
    if source["int32_dequantize"]:
        line += f"; {source['int32_dequantize']} int32 bias DequantizeLinear folded to float (TensorRT dequantizes int8 only)"
    if source["casts"]:
        line += f"; {source['casts']} Casts make the fp16 layers explicit (strongly typed)"
    if source["opset"] > versions.max_opset(spec.version):
        line += f"; opset above {versions.max_opset(spec.version)}, the highest TensorRT {spec.version}'s operators.md lists"
    return line


def _planned(model, plan: PrecisionPlan) -> dict[str, str]:
    return {n.name: plan.precision_of(n.name) for n in model.graph.node if n.op_type in QUANTIZABLE}


def _write_script(spec: BuildSpec, target: Target, out_dir: Path, calibrated: bool) -> Path:
    """`tensorrt/trtexec.sh`, checked for flags the target's trtexec takes before it is written."""
    text = trtexec_script(spec, target, out_dir, calibrated)
    versions.check_trtexec(text, spec.version, f"{FOLDER}/trtexec.sh")
    script = out_dir / FOLDER / "trtexec.sh"
    atomic_write_text(script, text)
    script.chmod(0o755)
    return script


def _dla_notes(model, spec: BuildSpec, plan: PrecisionPlan, target: Target) -> dict:
    """The layers TensorRT will run on DLA core `spec.dla_core` and those that fall back to the GPU, with why."""
    if spec.strongly_typed:
        types = tensorrt_types.tensor_types(model)
        precision_of = lambda node: "fp16" if types.get(node.output[0]) == tensorrt_types.FLOAT16 else "fp32"  # noqa: E731
    else:
        precision_of = lambda node: plan.layers.get(node.name, "fp16" if spec.fp16 else "fp32")  # noqa: E731
    on_dla, fallback = gpu_fallback(model, precision_of, target)
    shown = "; ".join(f"{name} ({why})" for name, why in list(fallback.items())[:4])
    more = f"; and {len(fallback) - 4} more (report.json build.dla)" if len(fallback) > 4 else ""
    line = (f"DLA core {spec.dla_core}: {on_dla} of {on_dla + len(fallback)} layers on DLA, "
            + (f"{len(fallback)} fall back to the GPU: {shown}{more}" if fallback else "none falls back to the GPU"))
    return {"core": spec.dla_core, "dla_layers": on_dla, "gpu_fallback": fallback, "summary": line,
            "limits": "NVIDIA TensorRT Developer Guide, DLA Supported Layers and Restrictions"}


class QdqTwin:
    """The ONNX TensorRT builds from, in ONNX Runtime with graph optimizations off: Q/DQ computed as
    written, independent of this CPU's int8 kernels. What runs is not TensorRT: no per-layer times
    and no executed precisions are claimed for it."""

    def __init__(self, path: Path, threads: int):
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


class TensorRTBackend(BackendDefaults):
    name = "tensorrt"
    suffixes = (".engine", ".plan")
    calibration_observes_all = True  # the calibration cache scales every tensor TensorRT may run in int8

    def write_calibration_files(self, result: CalibrationResult, stats: dict[str, TensorStats],
                                options: CalibrationOptions, target: Target, out_dir: Path) -> dict[str, str]:
        return tensorrt_calibration.write_calibration_files(result, stats, options, target, out_dir)

    def replan_calibration_files(self, files: dict[str, str], out_dir: Path, planned: dict[str, str]) -> None:
        tensorrt_calibration.replan_calibration_files(files, out_dir, planned)

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
        version, core = versions.of(target), dla_core(target)
        rest = plan.default if plan.default in ("fp16", "fp32") else target.float_baseline or "fp32"
        retype = (lambda m: tensorrt_types.cast_float_layers(m, dict(plan.layers), rest)) if versions.strongly_typed(version) else None
        source = write_source(Path(onnx_path), out_dir / SOURCE, version, retype)
        model = source.pop("model")
        spec = build_spec(model, plan, target)
        if plan.quantized and not spec.int8:
            raise BadInput(f"the plan has int8 layers but {Path(onnx_path).name} has no Q/DQ: build from edgekit's "
                           "calibrated model.int8.onnx (deploy or calibrate with --precision int8)")
        files, summary = [out_dir / SOURCE], [_source_line(source, spec)]
        notes = {"source": SOURCE, "tensorrt_version": version, "strongly_typed": spec.strongly_typed,
                 "flags": {"int8": spec.int8, "fp16": spec.fp16}, "pinned_layers": spec.layers, "summary": summary}
        calibration = _calibration_files(out_dir, _planned(model, plan), target, context) if spec.int8 else None
        if calibration:
            files += [calibration["cache"], calibration["flags"]]
            summary.append(f"calibration cache {FOLDER}/calibration.cache ({calibration['header']}, {calibration['tensors']} "
                           f"tensors) and {FOLDER}/layer_precisions.txt read back: for older tools, the build does not read them")
        if core is not None:
            notes["dla"] = _dla_notes(model, spec, plan, target)
            summary.append(notes["dla"]["summary"])
        files.append(_write_script(spec, target, out_dir, calibrated=calibration is not None))
        trt, why = _tensorrt()
        if trt is not None and target.local:
            engine = build_engine(trt, spec, out_dir)
            return Artifact(self.name, engine, (engine, *files), plan.label, {"source": SOURCE},
                            notes={**notes, "tensorrt": trt.__version__})
        summary.append(f"on the device: sh {FOLDER}/trtexec.sh builds {ENGINE} "
                       f"({'the device is not this machine' if trt else why.split(':')[0]})")
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
