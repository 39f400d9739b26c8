"""The PyTorch side of the hls4ml build: the module rewritten into layers hls4ml 1.3 converts, checked
layer by layer before hls4ml sees it, and its value ranges observed on the calibration split.

hls4ml reads PyTorch through torch.fx, so edgekit does the same: every rewrite is a graph edit that is
exact (an adaptive pool whose input is a multiple of its output *is* a fixed pool; BatchNorm after a
conv folds into its weights), and the fx node names are the hls4ml layer names the config is keyed by.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import BadInput

ADAPTIVE = {"AdaptiveAvgPool1d": "AvgPool1d", "AdaptiveAvgPool2d": "AvgPool2d",
            "AdaptiveMaxPool1d": "MaxPool1d", "AdaptiveMaxPool2d": "MaxPool2d"}
ADAPTIVE_FUNCTIONS = {"adaptive_avg_pool1d": "AdaptiveAvgPool1d", "adaptive_avg_pool2d": "AdaptiveAvgPool2d",
                      "adaptive_max_pool1d": "AdaptiveMaxPool1d", "adaptive_max_pool2d": "AdaptiveMaxPool2d"}
SKIPPED = ("Dropout", "Sequential")  # hls4ml's parser passes these through
BATCH = 64  # calibration samples per forward pass while observing ranges


@dataclass(frozen=True)
class Range:
    low: float
    high: float


@dataclass
class Prepared:
    """The rewritten module hls4ml converts, with what the config and the engine need to know of it."""

    module: object  # torch.fx.GraphModule
    input_names: list[str]  # the model's input names, in forward order
    input_shapes: list[tuple[int, ...]]  # per input, without the batch dimension (PyTorch layout)
    output_shapes: list[tuple[int, ...]]  # per output, without the batch dimension (PyTorch layout)
    rewrites: list[str] = field(default_factory=list)  # what was rewritten, for the report
    ranges: dict[str, Range] = field(default_factory=dict)  # fx node (= hls4ml layer) → observed output range


def prepare(module, inputs, example: dict[str, np.ndarray]) -> Prepared:
    """Trace `module` as hls4ml does, rewrite adaptive pools, fold BatchNorm, check every layer."""
    import torch
    from torch.fx.experimental.optimization import fuse
    from torch.fx.passes.shape_prop import ShapeProp

    if not isinstance(module, torch.nn.Module) or isinstance(module, torch.jit.ScriptModule):
        raise BadInput(f"hls4ml converts a PyTorch nn.Module through torch.fx; this model is a {type(module).__name__} "
                       "(TorchScript cannot be traced: give the module's factory, package.module:build)")
    module = module.eval()
    gm = _trace(module)
    args = [torch.from_numpy(np.ascontiguousarray(example[s.name])) for s in inputs]
    ShapeProp(gm).propagate(*args)
    rewrites = _rewrite_adaptive_pools(gm)
    folded = fuse(gm, no_trace=True)
    fused = sum(1 for n in gm.graph.nodes if _class_of(gm, n).startswith("BatchNorm")) - \
        sum(1 for n in folded.graph.nodes if _class_of(folded, n).startswith("BatchNorm"))
    if fused:
        rewrites.append(f"{fused} BatchNorm folded into the conv/linear before it")
    gm = _trace(folded)  # re-traced: node names are then exactly those hls4ml gives its layers
    ShapeProp(gm).propagate(*args)
    check_supported(gm)
    outputs = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
    outputs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
    return Prepared(gm, [s.name for s in inputs], [tuple(s.shape[1:]) for s in inputs],
                    [tuple(o.meta["tensor_meta"].shape[1:]) for o in outputs], rewrites)


def _trace(module):
    import torch
    from hls4ml.utils.torch import CustomFXTracer

    try:
        return torch.fx.GraphModule(module, CustomFXTracer().trace(module))
    except Exception as err:
        raise BadInput(f"hls4ml cannot read this model: torch.fx could not trace it ({type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''})") from err


def _class_of(gm, node) -> str:
    return type(gm.get_submodule(node.target)).__name__ if node.op == "call_module" else ""


def _fixed_pool(kind: str, name: str, in_size: tuple[int, ...], output_size):
    """The fixed pool equal to an adaptive one: kernel = stride = in / out per dimension, when it divides."""
    import torch

    wanted = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * len(in_size)
    out = tuple(i if o is None else int(o) for i, o in zip(in_size, wanted, strict=True))
    if any(o == 0 or i % o for i, o in zip(in_size, out, strict=True)):
        raise BadInput(f"layer '{name}' ({kind} to {out} from {in_size}): hls4ml 1.3 has no adaptive pooling, and this "
                       "one has no exact fixed-pool equivalent (the input size is not a multiple of the output size)")
    kernel = tuple(i // o for i, o in zip(in_size, out, strict=True))
    return getattr(torch.nn, ADAPTIVE[kind])(kernel, stride=kernel)


def _rewrite_adaptive_pools(gm) -> list[str]:
    """Adaptive pools (modules or functional calls) → AvgPool/MaxPool with kernel = stride = in/out:
    the same bins exactly, so the same numbers (output 1 is global pooling)."""
    done = []
    for node in list(gm.graph.nodes):
        kind = _class_of(gm, node)
        if node.op == "call_function" and getattr(node.target, "__name__", "") in ADAPTIVE_FUNCTIONS:
            kind = ADAPTIVE_FUNCTIONS[node.target.__name__]
            size = node.args[1] if len(node.args) > 1 else node.kwargs["output_size"]
        elif kind in ADAPTIVE:
            module = gm.get_submodule(node.target)
            if getattr(module, "return_indices", False):
                raise BadInput(f"layer '{node.target}' ({kind} with return_indices): hls4ml 1.3 has no equivalent")
            size = module.output_size
        else:
            continue
        shape = tuple(node.args[0].meta["tensor_meta"].shape)
        pool = _fixed_pool(kind, str(node.target if node.op == "call_module" else node.name), shape[2:], size)
        if node.op == "call_module":
            parent, _, leaf = node.target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf, pool)
        else:
            gm.add_submodule(f"{node.name}_pool", pool)
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(f"{node.name}_pool", (node.args[0],))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
        done.append(f"{node.name}: {kind} → {type(pool).__name__}(kernel={pool.kernel_size}) (exact)")
    gm.graph.lint()
    gm.recompile()
    return done


def check_supported(gm) -> None:
    """Every layer must be one hls4ml 1.3's PyTorch converter knows: one line naming the first that is not."""
    import torch
    from hls4ml.converters.pytorch_to_hls import get_supported_pytorch_layers, layer_name_map

    known = set(get_supported_pytorch_layers()) | set(SKIPPED)
    modules = sorted(k for k in known if hasattr(torch.nn, k) and k not in SKIPPED)
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            kind = type(module).__name__
            if kind not in known:
                raise BadInput(f"layer '{node.target}' ({kind}): hls4ml 1.3 has no PyTorch converter for it "
                               f"(it converts {', '.join(modules)})")
            if "Conv" in kind and (module.groups != 1 or module.padding_mode != "zeros"):
                raise BadInput(f"layer '{node.target}' ({kind}, groups={module.groups}, padding_mode={module.padding_mode}): "
                               "hls4ml 1.3 converts only groups=1 convolutions with zero padding")
        elif node.op in ("call_function", "call_method"):
            operation = node.name.rsplit("_", 1)[0] if node.name.split("_")[-1].isdigit() else node.name
            operation = layer_name_map.get(operation, operation)
            if operation not in known and operation != "getitem":
                raise BadInput(f"operation '{node.name}' ({node.target if isinstance(node.target, str) else node.target.__name__}): "
                               "hls4ml 1.3 has no PyTorch converter for it")


def observe(prepared: Prepared, inputs: dict[str, np.ndarray]) -> None:
    """Each node's output range over the calibration samples (min and max of every value)."""
    import torch

    seen: dict[str, list[float]] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                lo, hi = float(out.min()), float(out.max())
                old = seen.setdefault(node.name, [lo, hi])
                old[0], old[1] = min(old[0], lo), max(old[1], hi)
            return out

    n = len(inputs[prepared.input_names[0]])
    recorder = Recorder(prepared.module)
    with torch.no_grad():
        for start in range(0, n, BATCH):
            recorder.run(*[torch.from_numpy(np.ascontiguousarray(inputs[name][start:start + BATCH]))
                           for name in prepared.input_names])
    prepared.ranges = {name: Range(lo, hi) for name, (lo, hi) in seen.items()}
