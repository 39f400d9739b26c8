"""Structured channel pruning over Torch-Pruning's dependency graph.

Removing an output channel of a convolution also removes the matching channel of its BatchNorm, of a
depthwise convolution that follows it, of every tensor added to it at a residual join, and the input
channel of every consumer. Torch-Pruning traces the model once and groups those couplings; edgekit
names each group by the first Conv/Linear (in module order) whose output channels drive it, and
prunes a group by keeping its largest L2-magnitude channels, so the model stays runnable and as close
to the original as magnitude can tell without data.

Attention is pruned in whole heads. Torch-Pruning couples a layer's q/k/v projections (separate, as in
BERT and ViT, or one fused `qkv`, as in timm) with the output projection's inputs; when the module
holding them names its head count (`num_attention_heads`, `num_heads`, `n_heads`), the group's unit is
one head: the same heads leave q, k, v and o, ranked by their summed L2 magnitude, and the module's head
count (and `all_head_size`) is set to what is left, so reshapes by head size keep working. Other groups
whose channels are split further on (`chunk`, a fused projection without a head count) are left out:
any index set would not keep the split even.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import BadInput, Failure


@dataclass(frozen=True)
class PruneGroup:
    """Channels that must be pruned together; `name` is the root layer's qualified module name."""

    name: str
    channels: int
    modules: tuple[str, ...]  # every named layer the group's channels run through (outputs and inputs)
    macs_share: float | None = None  # fraction of the model's MACs in those layers (shared layers count for each)
    kind: str = "channels"  # "channels" (convolutions), "features" (Linear widths: an FFN's), "heads" (attention)
    unit: int = 1  # channels pruned together: the root's channels per head for "heads", else 1

    @property
    def heads(self) -> int | None:
        return self.channels // self.unit if self.kind == "heads" else None

    def as_dict(self) -> dict:
        return {"name": self.name, "channels": self.channels, "modules": list(self.modules),
                "macs_share": self.macs_share, "kind": self.kind, "unit": self.unit, "heads": self.heads}


HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")


@dataclass(frozen=True)
class _Heads:
    """How a head group's root channels split into heads: `fused` slices (q, k, v in one projection)
    of `width` channels, each `count` heads of `width // count` channels."""

    owner: str  # the attention module's qualified name (holds the head count)
    attr: str
    count: int
    width: int
    fused: int

    def channels(self, head: int) -> list[int]:
        size = self.width // self.count
        return [s * self.width + head * size + j for s in range(self.fused) for j in range(size)]


@dataclass
class _Graph:
    """A traced dependency graph with its groups, keyed by root name (internal)."""

    dg: Any
    model: Any
    roots: dict[str, Any] = field(default_factory=dict)  # group name → root module
    groups: dict[str, PruneGroup] = field(default_factory=dict)
    heads: dict[str, _Heads] = field(default_factory=dict)  # head groups' split


def _layer_types():
    import torch.nn as nn

    return (nn.modules.conv._ConvNd, nn.Linear)


def _depthwise(module) -> bool:
    return getattr(module, "groups", 1) > 1 and module.groups == module.out_channels


def count_macs(module, example_inputs: tuple) -> dict[str, int]:
    """Multiply-accumulates of every Conv/Linear, by module name, from one forward pass on the example."""
    import torch

    names = {m: n for n, m in module.named_modules()}
    macs: dict[str, int] = {}

    def hook(layer, _inputs, output) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(layer, torch.nn.Linear):
            per_out = layer.in_features
        else:  # per output element; approximate for transposed convolutions
            per_out = (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
        macs[names[layer]] = macs.get(names[layer], 0) + out.numel() * per_out

    modes = {m: m.training for m in module.modules()}  # eval for the count: BatchNorm statistics stay as they are
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, _layer_types())]
    try:
        module.eval()
        with torch.no_grad():
            module(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    return macs


def _output_layers(dg) -> set:
    """The Conv/Linear layers whose outputs reach a model output with no other such layer in between
    (a classifier: its output channels are the classes, never prunable)."""
    nodes = list(dg.module2node.values())
    stack = [n for n in nodes if not n.outputs]
    seen, found = set(), set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, _layer_types()):
            found.add(node.module)
            continue
        stack.extend(node.inputs)
    return found


def _head_split(model, drivers: list[str], lengths: list[int], channels: int) -> _Heads | None:
    """The head split of a group whose out-channel drivers are all projections of one attention module
    that names its head count; None for any other group."""
    owners = {name.rpartition(".")[0] for name in drivers}
    if len(owners) != 1:
        return None
    owner = owners.pop()
    module = model.get_submodule(owner)
    attr = next((a for a in HEAD_COUNT_ATTRS if isinstance(getattr(module, a, None), int)), None)
    if attr is None:
        return None
    count, width = getattr(module, attr), min(lengths)
    if count < 1 or width % count or channels % width:
        return None
    return _Heads(owner, attr, count, width, channels // width)


def _trace(model, example_inputs: tuple, ignored: tuple[str, ...] | list[str]) -> _Graph:
    """Trace `model` (modified in place by later pruning: pass a copy) and collect its groups."""
    import torch
    import torch_pruning as tp

    if isinstance(model, torch.jit.ScriptModule) or not isinstance(model, torch.nn.Module):
        raise BadInput(f"pruning needs a PyTorch nn.Module to trace, not a {type(model).__name__} "
                       "(give a package.module:factory model)")
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    unknown = [n for n in ignored if n not in order]
    if unknown:
        raise BadInput(f"ignored layer(s) {unknown} are not modules of the model")
    with torch.enable_grad():
        try:
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
        except Exception as err:  # tracing runs the user's forward: any failure is reported in one line
            raise Failure(f"cannot trace the model's channel dependencies: {type(err).__name__}: {err}") from err
    skip = list(_output_layers(dg)) + [model.get_submodule(n) for n in ignored]
    graph = _Graph(dg, model)
    found = []
    for group in dg.get_all_groups(ignored_layers=skip, root_module_types=list(_layer_types())):
        drivers, members = [], []
        for dep, _ in group:
            layer = dep.target.module
            if layer not in names:  # Torch-Pruning's own nodes: adds, reshapes, the output
                continue
            members.append(names[layer])
            if dg.is_out_channel_pruning_fn(dep.handler) and isinstance(layer, _layer_types()):
                drivers.append(layer)
        if not drivers:
            continue
        plain = [m for m in drivers if not _depthwise(m)] or drivers
        root = min(plain, key=lambda m: order[names[m]])
        channels = dg.get_out_channels(root)
        heads = _head_split(model, [names[m] for m in drivers], [len(idxs) for _, idxs in group], channels)
        if heads is None and any(len(idxs) < channels for _, idxs in group):
            continue  # the channels are split (chunk, fused q/k/v without a head count): arbitrary indices would break it
        modules = tuple(sorted(set(members), key=order.__getitem__))
        found.append((names[root], root, channels, modules, heads))
    macs = count_macs(model, example_inputs)
    total = sum(macs.values()) or 1
    for name, root, channels, modules, heads in sorted(found, key=lambda f: order[f[0]]):
        share = sum(macs.get(m, 0) for m in modules) / total
        graph.roots[name] = root
        if heads is not None:
            graph.heads[name] = heads
            kind, unit = "heads", channels // heads.count
        else:
            kind, unit = ("features" if isinstance(root, _layer_types()[1]) else "channels"), 1
        graph.groups[name] = PruneGroup(name, int(channels), modules, round(share, 6), kind, unit)
    return graph


def prune_groups(module, example_inputs: tuple, *, ignored: tuple[str, ...] = ()) -> list[PruneGroup]:
    """The model's prunable channel groups in module order; the model itself is not touched."""
    return list(_trace(copy.deepcopy(module), tuple(example_inputs), ignored).groups.values())


def output_layers(module, example_inputs: tuple) -> list[str]:
    """The Conv/Linear layers whose outputs are the model's (classifiers): never pruned nor factorized."""
    import torch
    import torch_pruning as tp

    model = copy.deepcopy(module)
    names = {m: n for n, m in model.named_modules()}
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=tuple(example_inputs), verbose=False)
    found = _output_layers(dg)
    return [n for m, n in names.items() if m in found]


def _named_like(graph: _Graph, keep: dict[str, int], like) -> dict[str, int]:
    """`keep` by this model's group names: a name of `like` (the unchanged model's groups) that this model
    no longer has (its root was dropped or factorized) is the group sharing most of its layers; on a tie, the
    one rooted inside the old root (a factorized FFN's output factor, not the residual stream that its input
    factor and the FFN's second layer also belong to)."""
    reference = {g.name: g for g in like}
    out = {}
    for name, count in keep.items():
        if name not in graph.groups and name in reference:
            wanted = reference[name].modules

            def shared(group, wanted=wanted, root=name) -> tuple[int, bool]:
                return (sum(any(m == w or m.startswith(w + ".") for m in group.modules) for w in wanted),
                        group.name.startswith(root + "."))

            best = max(graph.groups.values(), key=shared, default=None)
            if best is not None and shared(best)[0] > 0:
                name = best.name
        out[name] = count
    return out


def prune(module, example_inputs: tuple, keep: dict[str, int], *, ignored: tuple[str, ...] = (), like=()):
    """A pruned deep copy, in eval mode: group `name` keeps exactly `keep[name]` channels (its largest
    by group L2 magnitude), groups not named stay whole. The original module is not touched. `like`:
    the groups of the model before blocks were dropped or layers factorized, whose names `keep` may use."""
    import torch
    import torch_pruning as tp

    example_inputs = tuple(example_inputs)
    model = copy.deepcopy(module)
    graph = _trace(model, example_inputs, ignored)
    keep = _named_like(graph, keep, like) if like else keep
    for name, count in keep.items():
        group = graph.groups.get(name)
        if group is None:
            known = ", ".join(graph.groups) or "none"
            raise BadInput(f"prune: '{name}' is not a prunable group (groups: {known})")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= group.channels:
            raise BadInput(f"prune: group '{name}' has {group.channels} channels; keep {count!r} is not in 1..{group.channels}")
        if count % group.unit:
            raise BadInput(f"prune: group '{name}' is pruned in whole heads of {group.unit} channels; keep {count} is not a multiple")
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    drops = {}
    for name, count in keep.items():  # scored on the unpruned model, so the order of groups does not matter
        root, channels = graph.roots[name], graph.groups[name].channels
        if count == channels:
            continue
        group = graph.dg.get_pruning_group(root, graph.dg.get_pruner_of_module(root).prune_out_channels,
                                           list(range(channels)))
        scores = importance(group)
        if scores is None:
            raise Failure(f"prune: group '{name}' has no weights to rank its channels by")
        heads = graph.heads.get(name)
        if heads is None:
            drops[name] = sorted(torch.argsort(scores, stable=True)[: channels - count].tolist())
        else:  # whole heads, the weakest by summed magnitude
            per_head = torch.stack([scores[heads.channels(h)].sum() for h in range(heads.count)])
            weakest = torch.argsort(per_head, stable=True)[: (channels - count) // graph.groups[name].unit].tolist()
            drops[name] = sorted(i for h in weakest for i in heads.channels(h))
    for name, drop in drops.items():
        root = graph.roots[name]
        graph.dg.get_pruning_group(root, graph.dg.get_pruner_of_module(root).prune_out_channels, drop).prune()
        heads = graph.heads.get(name)
        if heads is not None:  # the attention module's own count, so its reshapes by head size still add up
            owner = model.get_submodule(heads.owner)
            kept_heads = keep[name] // graph.groups[name].unit
            setattr(owner, heads.attr, kept_heads)
            if isinstance(getattr(owner, "all_head_size", None), int):
                owner.all_head_size = kept_heads * (heads.width // heads.count)
    _check(model, graph, keep, example_inputs)
    model.eval()
    return model


def _check(model, graph: _Graph, keep: dict[str, int], example_inputs: tuple) -> None:
    import torch

    for name, count in keep.items():
        got = graph.dg.get_out_channels(graph.roots[name])
        if got != count:
            raise Failure(f"prune: group '{name}' has {got} channels after pruning, {count} were asked")
    model.eval()
    try:
        with torch.no_grad():
            model(*example_inputs)
    except Exception as err:
        raise Failure(f"the pruned model does not run: {type(err).__name__}: {err}") from err
