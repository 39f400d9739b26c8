"""Low-rank factorization: a Linear or 1x1 convolution W (out x in) becomes two of rank r via truncated
SVD, W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T), which costs r*(in+out) MACs per position instead of
in*out. It only pays when r < in*out / (in+out), and only in ranks the target's kernels like."""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict

from edgekit.errors import BadInput


def _shape(layer) -> tuple[int, int]:
    """(in, out) of a factorizable layer, or BadInput."""
    import torch.nn as nn

    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) == (1, 1) and layer.groups == 1:
        return layer.in_channels, layer.out_channels
    raise BadInput(f"low-rank: a {type(layer).__name__} cannot be factorized (only Linear and 1x1 Conv2d with groups=1)")


def rank_choices(layer, alignment: int) -> tuple[int, ...]:
    """Ranks that save MACs (r*(in+out) < in*out), multiples of `alignment`, ascending; maybe empty."""
    if alignment < 1:
        raise BadInput(f"low-rank: alignment must be positive, not {alignment}")
    n_in, n_out = _shape(layer)
    return tuple(r for r in range(alignment, min(n_in, n_out) + 1, alignment) if r * (n_in + n_out) < n_in * n_out)


_SVDS: OrderedDict[tuple, tuple] = OrderedDict()  # the last few weights' SVDs, by their bytes
SVD_CACHE = 4


def _svd(weight) -> tuple:
    """The SVD (in float64) of a weight matrix, kept for the last SVD_CACHE weights: the search's rank
    ladder factorizes one layer's unchanged weight at several ranks (the SVD of a 2048x512 layer takes
    about 0.5 s, the digest of its bytes a few ms)."""
    import torch

    try:
        data = weight.contiguous().numpy()
    except (TypeError, RuntimeError):  # a dtype or device numpy cannot read: not cached
        return torch.linalg.svd(weight.double(), full_matrices=False)
    key = (tuple(data.shape), str(data.dtype), hashlib.sha256(data.tobytes()).hexdigest())
    if key in _SVDS:
        _SVDS.move_to_end(key)
        return _SVDS[key]
    found = torch.linalg.svd(weight.double(), full_matrices=False)
    _SVDS[key] = found = tuple(t.clone() for t in found)
    while len(_SVDS) > SVD_CACHE:
        _SVDS.popitem(last=False)
    return found


def _split(layer, rank: int):
    import torch
    import torch.nn as nn

    n_in, n_out = _shape(layer)
    if not isinstance(rank, int) or not 1 <= rank <= min(n_in, n_out):
        raise BadInput(f"low-rank: rank {rank!r} is not in 1..{min(n_in, n_out)} for a {n_in}->{n_out} layer")
    u, s, vh = _svd(layer.weight.detach().reshape(n_out, n_in))
    root = s[:rank].sqrt()
    first_w = (root[:, None] * vh[:rank]).to(layer.weight.dtype)
    second_w = (u[:, :rank] * root[None, :]).to(layer.weight.dtype)
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(n_in, rank, bias=False), nn.Linear(rank, n_out, bias=bias)
    else:  # the first keeps stride and padding; padded zeros stay zero through it, as in the original
        first = nn.Conv2d(n_in, rank, 1, layer.stride, layer.padding, bias=False, padding_mode=layer.padding_mode)
        second = nn.Conv2d(rank, n_out, 1, bias=bias)
    with torch.no_grad():
        first.weight.copy_(first_w.reshape(first.weight.shape))
        second.weight.copy_(second_w.reshape(second.weight.shape))
        if bias:
            second.bias.copy_(layer.bias.detach())
    return nn.Sequential(first, second).train(layer.training)


def _composed(pair):
    """The single layer a factorized pair computes (so a pair can be factorized again, to a lower rank)."""
    import torch
    import torch.nn as nn

    first, second = pair
    n_in, rank = _shape(first)
    _, n_out = _shape(second)
    if isinstance(first, nn.Linear):
        layer = nn.Linear(n_in, n_out, bias=second.bias is not None)
    else:
        layer = nn.Conv2d(n_in, n_out, 1, first.stride, first.padding, bias=second.bias is not None,
                          padding_mode=first.padding_mode)
    with torch.no_grad():
        weight = second.weight.reshape(n_out, rank) @ first.weight.reshape(rank, n_in)
        layer.weight.copy_(weight.reshape(layer.weight.shape))
        if second.bias is not None:
            layer.bias.copy_(second.bias)
    return layer.train(first.training)


def _is_pair(layer) -> bool:
    import torch.nn as nn

    return isinstance(layer, nn.Sequential) and len(layer) == 2 and type(layer[0]) is type(layer[1]) \
        and isinstance(layer[0], (nn.Linear, nn.Conv2d))


def factorize(module, names: dict[str, int]):
    """A deep copy where each named layer becomes Sequential(rank-r layer, output layer); a layer that is
    such a pair already is factorized again from the product it computes. The original is not touched."""
    model = copy.deepcopy(module)
    for name, rank in names.items():
        if not name:
            raise BadInput("low-rank: name a layer inside the model, not the model itself")
        try:
            layer = model.get_submodule(name)
        except AttributeError as err:
            raise BadInput(f"low-rank: '{name}' is not a module of the model") from err
        parent_name, _, attr = name.rpartition(".")
        layer = _composed(layer) if _is_pair(layer) else layer
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, _split(layer, rank))
    return model
