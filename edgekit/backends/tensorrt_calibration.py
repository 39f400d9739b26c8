"""TensorRT's own calibration files, written when edgekit calibrates for a TensorRT target (the
backend's `write_calibration_files`): the calibration cache with the symmetric scale of every float
tensor, the trtexec layer-precision flags that pin the plan, and the device-side trtexec line that
builds from the float model and the cache (implicit quantization); the flags rewritten when a mixed
plan is made from the same calibration (`replan_calibration_files`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.backends import tensorrt_versions as versions
from edgekit.backends.tensorrt_spec import FOLDER
from edgekit.calibrate import scales, trt_cache
from edgekit.targets import Target

if TYPE_CHECKING:
    from edgekit.calibrate.observers import TensorStats
    from edgekit.calibrate.run import CalibrationOptions, CalibrationResult

CACHE, FLAGS, BUILD = f"{FOLDER}/calibration.cache", f"{FOLDER}/layer_precisions.txt", f"{FOLDER}/trtexec.sh"


def write_calibration_files(result: CalibrationResult, stats: dict[str, TensorStats], options: CalibrationOptions,
                            target: Target, out_dir: Path) -> dict[str, str]:
    """TensorRT's calibration cache (symmetric scales of every non-sentinel tensor) and the
    trtexec layer-precision flags that pin the plan."""
    out_dir = Path(out_dir)
    (out_dir / FOLDER).mkdir(exist_ok=True)
    cache = {}
    for name, s in stats.items():
        if s.sentinel:
            continue  # no scale: TensorRT keeps the tensor in float
        lo, hi = scales.activation_range(s, result.method, symmetric=True, percentile=options.percentile)
        cache[name] = scales.qparams(lo, hi, symmetric=True, method=result.method).scale
    version = versions.of(target)
    trt_cache.write_cache(out_dir / CACHE, cache, version=version, algorithm=trt_cache.ALGORITHMS[result.method])
    flags = trt_cache.layer_precisions(result.planned)
    (out_dir / FLAGS).write_text(flags + "\n")
    fp32_model = result.files.get("equalized_onnx", "model.onnx")  # the scales are those of this model
    command = (f"trtexec --onnx={fp32_model} --int8 --fp16 --calib={CACHE} "
               f"--precisionConstraints=obey --layerPrecisions={flags} --saveEngine=model.engine")
    if versions.strongly_typed(version):  # calibrators are deprecated from 10.1 and gone in 11: a comment, for older tools
        (out_dir / BUILD).write_text(f"#!/bin/sh\n# TensorRT {version} builds from explicit quantization: the build writes model.trt.onnx\n"
                                     "# (Q/DQ and casts) and replaces this file with its trtexec --stronglyTyped line.\n"
                                     f"# The calibration cache is for older tools (TensorRT < 10.1, implicit quantization):\n#   {command}\n")
        return {"tensorrt_cache": CACHE, "tensorrt_layer_precisions": FLAGS, "tensorrt_build": BUILD}
    script = ("#!/bin/sh\n# Build on the device (TensorRT is not on this machine). Run from the run directory.\n"
              "# Or build the explicit-quantization engine from the Q/DQ model with int32 biases folded\n"
              "# to float (TensorRT dequantizes int8 only), which edgekit deploy writes as model.trt.onnx:\n"
              "#   trtexec --onnx=model.trt.onnx --int8 --fp16 --saveEngine=model.engine\n" + command + "\n")
    versions.check_trtexec(script, version, BUILD)
    (out_dir / BUILD).write_text(script)
    return {"tensorrt_cache": CACHE, "tensorrt_layer_precisions": FLAGS, "tensorrt_build": BUILD}


def replan_calibration_files(files: dict[str, str], out_dir: Path, planned: dict[str, str]) -> None:
    """The layer precisions (and the trtexec line that repeats them) made to follow `planned`, a new plan
    of the same calibration; the cache is unchanged (the scales are the same)."""
    flags_file = files.get("tensorrt_layer_precisions")
    if flags_file:
        old = (out_dir / flags_file).read_text().strip()
        new = trt_cache.layer_precisions(planned)
        (out_dir / flags_file).write_text(new + "\n")
        build = out_dir / files.get("tensorrt_build", BUILD)
        if build.is_file():
            build.write_text(build.read_text().replace(old, new))
