"""DLA, the Jetson's deep learning accelerator: which DLA core a build uses (`--dla N`, or the target's
`backend.options.dla_core`), and which layers of the ONNX TensorRT will run on the GPU instead, and why.

Why check here: trtexec `--useDLACore N --allowGPUFallback` builds whatever DLA cannot run on the GPU
without saying so up front; the limits are documented (NVIDIA TensorRT Developer Guide, "DLA Supported
Layers and Restrictions": DLA runs fp16 and int8 only, static shapes, each dimension ≤ 8192, and a
layer list with limits per layer), so a plan's DLA share is known before the device builds it.
Orin Nano has no DLA; TensorRT 11.0 and 11.1 support none (its "Working with DLA" page)."""

from __future__ import annotations

from edgekit.backends import tensorrt_versions as versions
from edgekit.backends.tensorrt_source import constants
from edgekit.errors import BadInput

MAX_DIM = 8192
NO_DLA_TENSORRT = ((11, 0), (11, 2))  # 11.0 and 11.1: "DLA is not supported"
NOT_LAYERS = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast", "Constant", "Identity", "Shape"})
ACTIVATIONS = frozenset({"Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu", "PRelu", "BatchNormalization"})
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Max", "Min", "Div", "Pow"})
SHUFFLES = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"})
POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})


def with_dla(target, core: int):
    """`target` built for DLA core `core` (its backend option dla_core); a one-line BadInput where it has none."""
    updated = target.model_copy(update={"backend": target.backend.model_copy(
        update={"options": {**target.backend.options, "dla_core": core}})})
    dla_core(updated)
    return updated


def dla_core(target) -> int | None:
    """The DLA core the target's build uses (None: the GPU only), checked against the device and its TensorRT."""
    core = target.backend.options.get("dla_core")
    if core is None:
        return None
    cores = int(target.backend.options.get("dla_cores", 0))
    if target.backend.name != "tensorrt" or cores == 0:
        raise BadInput(f"--dla: target {target.name} has no DLA core ({target.device})")
    if not (isinstance(core, int) and 0 <= core < cores):
        raise BadInput(f"--dla {core}: target {target.name} has DLA cores 0 to {cores - 1}")
    version = versions.of(target)
    if NO_DLA_TENSORRT[0] <= versions.parse(version)[:2] < NO_DLA_TENSORRT[1]:
        raise BadInput(f"--dla: TensorRT {version} ({target.name}) supports no DLA (11.0 and 11.1 do not)")
    return core


def _shapes(model) -> dict[str, list]:
    from onnx import shape_inference

    graph = shape_inference.infer_shapes(model).graph
    return {info.name: [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
            for info in (*graph.input, *graph.value_info, *graph.output) if info.type.tensor_type.HasField("shape")}


def _ints(node, name: str, default=()) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == name), list(default))


def _conv(node, shapes) -> str | None:
    kernel = _ints(node, "kernel_shape") or (shapes.get(node.input[1]) or [0, 0, 0, 0])[2:]
    if node.op_type == "ConvTranspose" and (max(_ints(node, "pads", [0])) or max(_ints(node, "dilations", [1])) > 1
                                            or next((a.i for a in node.attribute if a.name == "group"), 1) > 1):
        return "deconvolution on DLA takes no padding, dilation or groups"
    if not all(1 <= k <= 32 for k in kernel):
        return f"kernel {kernel}: DLA takes 1 to 32"
    if not all(1 <= s <= 8 for s in _ints(node, "strides", [1])):
        return f"strides {_ints(node, 'strides')}: DLA takes 1 to 8"
    return None


def _pool(node, shapes) -> str | None:
    data = shapes.get(node.input[0]) or []
    window = data[2:] if node.op_type.startswith("Global") else _ints(node, "kernel_shape")
    if not all(k is not None and 1 <= k <= 8 for k in window):
        return f"window {window}: DLA pools 1 to 8"
    if not all(1 <= s <= 16 for s in _ints(node, "strides", [1])) or max(_ints(node, "pads", [0])) > 7:
        return "DLA pools with strides 1 to 16 and padding 0 to 7"
    return None


def _why(node, shapes, weights: set[str], dla_version: int) -> str | None:
    """Why DLA will not run this node (None: it will, as far as the documented limits go)."""
    op, dims = node.op_type, [shapes.get(node.input[0]) if node.input else None, shapes.get(node.output[0])]
    if any(d is None or None in d for d in dims):
        return "shape not static: DLA takes static shapes only"
    if any(v > MAX_DIM for d in dims for v in d[1:]):
        return f"a dimension above {MAX_DIM}"
    if op in ("Conv", "ConvTranspose"):
        return "DLA convolves 2D (4-D tensors) only" if len(dims[0]) != 4 else _conv(node, shapes)
    if op in ("Gemm", "MatMul"):
        return None if node.input[1] in weights else "a matrix product of two activations (DLA: constant weights only)"
    if op in POOLS:
        return "DLA pools 2D only" if len(dims[0]) != 4 else _pool(node, shapes)
    if op in ACTIVATIONS | ELEMENTWISE | SHUFFLES:
        return None if len(dims[0]) == 4 and len(dims[1]) == 4 else "DLA runs it on 4-D tensors only"
    if op == "Concat":
        return None if next((a.i for a in node.attribute if a.name == "axis"), 0) == 1 else "DLA concatenates channels only"
    if op == "Softmax":
        return None if dla_version >= 2 else "softmax runs on Orin's DLA (version 2) only"
    if op == "Resize":
        return None if len(dims[0]) == 4 else "DLA resizes 4-D tensors only"
    return f"{op} is not a layer DLA runs"


def gpu_fallback(model, precision_of, target) -> tuple[int, dict[str, str]]:
    """(layers DLA runs, {layer: why it falls back to the GPU}) for `model`; `precision_of(node)` is the
    float type the build gives the node (fp32 never runs on DLA)."""
    shapes = _shapes(model)
    consts = constants(model.graph)
    weights = set(consts) | {n.output[0] for n in model.graph.node
                             if n.op_type == "DequantizeLinear" and n.input[0] in consts}
    dla_version = int(target.backend.options.get("dla_version", 2))
    on_dla, fallback = 0, {}
    for node in model.graph.node:
        if node.op_type in NOT_LAYERS:
            continue
        name = node.name or node.output[0]
        why = f"{node.op_type} in fp32: DLA runs fp16 and int8 only" if precision_of(node) == "fp32" else \
            _why(node, shapes, weights, dla_version)
        if why is None:
            on_dla += 1
        else:
            fallback[name] = why if why.startswith(node.op_type) else f"{node.op_type}: {why}"
    return on_dla, fallback
