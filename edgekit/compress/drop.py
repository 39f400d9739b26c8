"""Layer dropping: a whole residual block (a transformer layer, a ResNet block whose shapes allow it)
replaced by a pass-through of its input.

A block can go when it is a composite element of an nn.ModuleList or nn.Sequential (a lone Linear 64→64 in
a Sequential is a layer, not a block), runs once per forward, holds at least one Conv/Linear, and returns
one tensor shaped as its first input: then the model around it
still adds up, and what is lost is the block's own contribution (what the search prices by its
validation metric after a short distillation). Blocks whose shortcut changes the shape are kept.
"""

from __future__ import annotations

import copy

from edgekit.errors import BadInput


def _skip_class():
    import torch

    class Skip(torch.nn.Module):
        """A dropped block: returns its first input (`was` names what it replaced, for reports)."""

        def __init__(self, was: str) -> None:
            super().__init__()
            self.was = was

        def forward(self, x, *args, **kwargs):
            return x

        def extra_repr(self) -> str:
            return f"dropped {self.was}"

    return Skip


def droppable_blocks(module, example_inputs: tuple) -> list[str]:
    """Qualified names of the blocks that can be dropped, in module order (the model is not changed)."""
    import torch
    import torch.nn as nn

    parents = [m for m in module.modules() if isinstance(m, (nn.ModuleList, nn.Sequential))]
    names = {m: n for n, m in module.named_modules()}
    blocks = [child for parent in parents for child in parent.children()  # composite: a layer alone is no block
              if any(True for _ in child.children())
              and any(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) for m in child.modules())]
    calls: dict[str, list[bool]] = {}

    def hook(block, inputs, output) -> None:
        first = inputs[0] if inputs else None
        same = (isinstance(output, torch.Tensor) and isinstance(first, torch.Tensor)
                and output.shape == first.shape and output.dtype == first.dtype)
        calls.setdefault(names[block], []).append(same)

    handles = [b.register_forward_hook(hook) for b in blocks]
    try:
        with torch.no_grad():
            module.eval()(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    order = {n: i for i, n in enumerate(names.values())}
    return sorted((n for n, seen in calls.items() if seen == [True]), key=order.__getitem__)


def drop_blocks(module, blocks) -> object:
    """A deep copy with each named block replaced by a pass-through; the original is not touched."""
    model = copy.deepcopy(module)
    skip = _skip_class()
    for name in blocks:
        if not name:
            raise BadInput("drop: name a block inside the model, not the model itself")
        try:
            model.get_submodule(name)
        except AttributeError as err:
            raise BadInput(f"drop: '{name}' is not a module of the model") from err
        parent, _, attr = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        if attr.isdigit() and hasattr(holder, "__getitem__"):
            holder[int(attr)] = skip(name)
        else:
            setattr(holder, attr, skip(name))
    return model
