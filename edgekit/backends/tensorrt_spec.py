"""A TensorRT build as flags: one BuildSpec that both the Python API build (tensorrt_device) and the
trtexec command line in `tensorrt/trtexec.sh` are made from, so the two cannot drift apart.

From TensorRT 10.1 on the network is strongly typed: the ONNX's Q/DQ and casts say every precision and
the build names none (`--stronglyTyped`, no `--int8`/`--fp16`, no per-layer precisions). Older TensorRT
(JetPack 4/5) builds the same explicit Q/DQ model weakly typed, with the precision flags it needs."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.backends import tensorrt_versions as versions
from edgekit.calibrate.qdq import QUANTIZABLE
from edgekit.plan import PrecisionPlan
from edgekit.targets import Target

SOURCE, ENGINE, FOLDER = "model.trt.onnx", "model.engine", "tensorrt"


@dataclass(frozen=True)
class BuildSpec:
    """One build, as the Python API does it and as trtexec does it: the two are made from this."""

    int8: bool
    fp16: bool
    layers: dict[str, str] = field(default_factory=dict)  # weakly typed only: float layers pinned to their plan
    outputs: dict[str, str] = field(default_factory=dict)  # and their output types (not the network's outputs)
    workspace_mb: int = 1024
    optimization_level: int = 3
    version: str = versions.DEFAULT_VERSION  # the device's TensorRT (its JetPack's)
    dla_core: int | None = None  # build for this DLA core, the layers it cannot run on the GPU

    @property
    def strongly_typed(self) -> bool:
        return versions.strongly_typed(self.version)

    def trtexec(self) -> str:
        """The trtexec line, in the flags this version's trtexec takes (tensorrt_versions.FLAGS)."""
        takes = lambda flag: versions.accepts(flag, self.version)  # noqa: E731
        args = [f"--onnx={SOURCE}", f"--saveEngine={ENGINE}"]
        if self.strongly_typed:
            args += ["--stronglyTyped"] * (versions.parse(self.version)[:2] < versions.ALWAYS_STRONGLY_TYPED_SINCE)
        else:
            args += ["--int8"] * self.int8 + ["--fp16"] * self.fp16
            if self.layers and takes("--layerPrecisions"):
                args += ["--precisionConstraints=obey",
                         "--layerPrecisions=" + ",".join(f"{n}:{p}" for n, p in self.layers.items())]
            if self.outputs and takes("--layerOutputTypes"):
                args += ["--layerOutputTypes=" + ",".join(f"{n}:{p}" for n, p in self.outputs.items())]
        if self.dla_core is not None:
            args += [f"--useDLACore={self.dla_core}", "--allowGPUFallback"]
        args += [f"--memPoolSize=workspace:{self.workspace_mb}M" if takes("--memPoolSize") else f"--workspace={self.workspace_mb}"]
        args += [f"--builderOptimizationLevel={self.optimization_level}"] * takes("--builderOptimizationLevel")
        args += [f"--timingCacheFile={FOLDER}/timing.cache", "--profilingVerbosity=detailed",
                 f"--exportLayerInfo={FOLDER}/layers.json", "--skipInference" if takes("--skipInference") else "--buildOnly"]
        return " ".join(["trtexec", *map(shlex.quote, args)])


def build_spec(model, plan: PrecisionPlan, target: Target) -> BuildSpec:
    """The build of `model` (as TensorRT parses it) for `plan` on `target`. Strongly typed: the model's
    types say it all. Weakly typed (TensorRT < 10.1): int8 where Q/DQ says so, fp16 if any layer is fp16
    (or int8 leaves the rest to the target's fp16 baseline) and, once more than one precision is
    allowed, every float Conv/Gemm/MatMul pinned to its plan (obeyed, not preferred)."""
    options, version = target.backend.options, versions.of(target)
    int8 = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    layers = {n.name: plan.precision_of(n.name) for n in model.graph.node if n.op_type in QUANTIZABLE}
    rest = target.float_baseline or "fp32"
    fp16 = "fp16" in layers.values() or plan.default == "fp16" or (int8 and rest == "fp16")
    dla = options.get("dla_core")
    common = {"workspace_mb": int(options.get("workspace_mb", 1024)),
              "optimization_level": int(options.get("builder_optimization_level", 3)),
              "version": version, "dla_core": None if dla is None else int(dla)}
    if versions.strongly_typed(version):
        return BuildSpec(int8, fp16, **common)
    pinned = {name: p for name, p in layers.items() if p != "int8"} if (int8 or fp16) else {}
    ends = {n.name for n in model.graph.node if set(n.output) & {o.name for o in model.graph.output}}
    return BuildSpec(int8, fp16, pinned, {n: p for n, p in pinned.items() if n not in ends}, **common)


def trtexec_script(spec: BuildSpec, target: Target, out_dir: Path, calibrated: bool) -> str:
    """`tensorrt/trtexec.sh`: the device-side build. Weakly typed TensorRT with a calibration cache also
    gets the implicit-quantization alternative as a comment; strongly typed TensorRT has none."""
    lines = ["#!/bin/sh", f"# Builds {ENGINE} on the device ({target.name}, TensorRT {spec.version}, "
             f"{'strongly typed: the ONNX types say every precision' if spec.strongly_typed else 'weakly typed'}); "
             "written by edgekit, run from anywhere.", 'cd "$(dirname "$0")/.." || exit 1', spec.trtexec()]
    if spec.layers and not versions.accepts("--layerPrecisions", spec.version):
        lines.insert(3, f"# TensorRT {spec.version}'s trtexec cannot pin layers (--layerPrecisions came in 8.4): "
                        "the Python build (edgekit on the device) pins them")
    if calibrated and not spec.strongly_typed:  # implicit quantization: the same scales, TensorRT choosing the int8 kernels
        fp32 = "model.equalized.onnx" if (out_dir / "model.equalized.onnx").is_file() else "model.onnx"
        lines.insert(3, f"# Or from the float model and the calibration cache: trtexec --onnx={fp32} --int8 --fp16 "
                        f"--calib={FOLDER}/calibration.cache --precisionConstraints=obey "
                        f"--layerPrecisions=$(cat {FOLDER}/layer_precisions.txt) --saveEngine={ENGINE}")
    return "\n".join(lines) + "\n"
