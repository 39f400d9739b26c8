"""A TensorRT build as flags: one BuildSpec that both the Python API build (tensorrt_device) and the
trtexec command line in `tensorrt/trtexec.sh` are made from, so the two cannot drift apart."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.calibrate.qdq import QUANTIZABLE
from edgekit.plan import PrecisionPlan
from edgekit.targets import Target

SOURCE, ENGINE, FOLDER = "model.trt.onnx", "model.engine", "tensorrt"


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


def trtexec_script(spec: BuildSpec, target: Target, out_dir: Path, calibrated: bool) -> str:
    """`tensorrt/trtexec.sh`: the device-side build, with the implicit-quantization alternative when calibrated."""
    lines = ["#!/bin/sh", f"# Builds {ENGINE} on the device ({target.name}, TensorRT "
             f"{target.backend.options.get('tensorrt_version', '10')}); written by edgekit, run from anywhere.",
             'cd "$(dirname "$0")/.." || exit 1', spec.trtexec()]
    if calibrated:  # implicit quantization: the same scales, TensorRT choosing the int8 kernels itself
        fp32 = "model.equalized.onnx" if (out_dir / "model.equalized.onnx").is_file() else "model.onnx"
        lines.insert(3, f"# Or from the float model and the calibration cache: trtexec --onnx={fp32} --int8 --fp16 "
                        f"--calib={FOLDER}/calibration.cache --precisionConstraints=obey "
                        f"--layerPrecisions=$(cat {FOLDER}/layer_precisions.txt) --saveEngine={ENGINE}")
    return "\n".join(lines) + "\n"
