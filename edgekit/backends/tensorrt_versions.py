"""What each TensorRT version takes, so a build made here for a Jetson fails here, not on the device:
the ONNX opset and operators its parser imports, the trtexec flags it accepts, and which way it is
told precisions (strongly typed from 10.1 on, builder flags before).

Why by version: a Jetson's TensorRT is fixed by its JetPack (the target names both). TensorRT 10.1
deprecated calibrators for explicit quantization and TensorRT 11 removed the precision flags, so one
trtexec line cannot serve JetPack 4/5 (TensorRT 8.x) and JetPack 6/7 (TensorRT 10.x) alike.
"""

from __future__ import annotations

import shlex

from edgekit.errors import BadInput

STRONGLY_TYPED_SINCE = (10, 1)  # calibrators deprecated "superseded by explicit quantization" (10.1 release notes)
ALWAYS_STRONGLY_TYPED_SINCE = (11, 0)  # 11.0: weak typing removed; --stronglyTyped a deprecated no-op
DEFAULT_VERSION = "10.3.0"

# ONNX-TensorRT docs/operators.md (github.com/onnx/onnx-tensorrt) at release/8.2-GA, 8.5-GA, 8.6-GA, 10.0-GA, 10.1-GA:
# the highest opset each documents, the operators marked "N" in 10.1, and those it imports that older
# parsers did not (absent or "N" there).
OPSETS = ((8, 2, 13), (8, 5, 17), (10, 0, 20))
UNSUPPORTED = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "BlackmanWindow",
    "CenterCropPad", "Col2Im", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear",
    "HammingWindow", "HannWindow", "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix",
    "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "RegexFullMatch", "STFT", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat",
    "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique"})
IMPORTED_SINCE = {
    (8, 5): frozenset({"GridSample", "HardSwish", "MeanVarianceNormalization", "Mod", "NonMaxSuppression", "NonZero",
                       "OneHot", "RandomNormal", "RandomNormalLike", "Reciprocal", "RoiAlign", "Shrink", "Trilu", "Xor"}),
    (8, 6): frozenset({"GroupNormalization", "IsInf", "LayerNormalization"}),
    (10, 0): frozenset({"CastLike", "Gelu", "Hardmax", "Mish"}),
    (10, 1): frozenset({"DeformConv"}),
}

# trtexec's flags: (first version that has it, first that does not), from its usage text in
# NVIDIA/TensorRT samples/common/sampleOptions.cpp at tags 8.2.1, 8.4.1, 8.5.2, v8.6.1, v9.1.0, v10.0.0,
# v10.3.0 and v11.0. Only the flags edgekit writes are listed; any other is refused.
FLAGS: dict[str, tuple[tuple[int, int] | None, tuple[int, int] | None]] = {
    "--onnx": (None, None), "--saveEngine": (None, None), "--timingCacheFile": (None, None),
    "--profilingVerbosity": (None, None), "--exportLayerInfo": (None, None),
    "--useDLACore": (None, None), "--allowGPUFallback": (None, None),
    "--workspace": (None, (10, 0)), "--memPoolSize": ((8, 4), None),
    "--buildOnly": (None, (8, 6)), "--skipInference": ((8, 6), None),
    "--builderOptimizationLevel": ((8, 6), None),
    "--stronglyTyped": ((9, 1), None),
    "--int8": (None, (11, 0)), "--fp16": (None, (11, 0)), "--calib": (None, (11, 0)),
    "--precisionConstraints": (None, (11, 0)), "--layerPrecisions": ((8, 4), (11, 0)),
    "--layerOutputTypes": ((8, 4), (11, 0)),
}


def parse(version: str) -> tuple[int, int, int]:
    """'10.3.0' → (10, 3, 0); a one-line BadInput for anything else."""
    try:
        major, minor, patch = (int(p) for p in (str(version).split(".") + ["0", "0"])[:3])
    except ValueError as err:
        raise BadInput(f"TensorRT version '{version}' is not MAJOR.MINOR[.PATCH]") from err
    return major, minor, patch


def of(target) -> str:
    """The TensorRT version a target's backend options name (its JetPack's)."""
    return str(target.backend.options.get("tensorrt_version", DEFAULT_VERSION))


def strongly_typed(version: str) -> bool:
    """Whether this TensorRT builds a strongly typed network from explicit Q/DQ and casts (≥ 10.1)."""
    return parse(version)[:2] >= STRONGLY_TYPED_SINCE


def accepts(flag: str, version: str) -> bool:
    since, until = FLAGS.get(flag, ((99, 0), None))
    here = parse(version)[:2]
    return (since is None or here >= since) and (until is None or here < until)


def max_opset(version: str) -> int:
    here = parse(version)[:2]
    return max((opset for major, minor, opset in OPSETS if here >= (major, minor)), default=13)


def unsupported(op: str, version: str) -> bool:
    """Whether this TensorRT's ONNX parser does not import `op` (standard domain)."""
    here = parse(version)[:2]
    return op in UNSUPPORTED or any(op in ops and here < since for since, ops in IMPORTED_SINCE.items())


def check_trtexec(script: str, version: str, where: str = "trtexec.sh") -> int:
    """Every trtexec line of a script uses only flags this TensorRT's trtexec accepts; the number of
    trtexec lines. Comment lines are not commands and are not read."""
    lines = 0
    for number, line in enumerate(script.splitlines(), start=1):
        words = shlex.split(line, comments=True)
        if not words or words[0] != "trtexec":
            continue
        lines += 1
        for word in words[1:]:
            flag = word.split("=", 1)[0]
            if not accepts(flag, version):
                raise BadInput(f"{where}:{number}: TensorRT {version}'s trtexec does not take {flag}")
    return lines
