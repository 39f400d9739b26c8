"""The search space: what a candidate may change, and how a candidate becomes a model.

Per prunable channel group (Torch-Pruning's couplings: residual joins and depthwise convolutions stay
consistent) a kept channel count, only in multiples of the target's channel alignment: on this CPU,
MobileNetV2 pruned to 12 or 8 channels gained little from int8, because kernels pad channels up to
their vector width anyway. Per quantizable ONNX layer a precision from the target's list. Optionally,
per Linear / 1x1 convolution, a low-rank factorization rank.

Pruning changes channel counts, never the graph, so the pruned model's ONNX export has the same
quantizable layers in the same order: per-layer precisions keyed by the original export's names carry
over through `layer_names_map`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgekit import graph
from edgekit.calibrate.qdq import quantizable_layers
from edgekit.compress.drop import drop_blocks, droppable_blocks
from edgekit.compress.lowrank import factorize, rank_choices
from edgekit.compress.prune import PruneGroup, output_layers, prune, prune_groups
from edgekit.errors import BadInput
from edgekit.models import LoadedModel
from edgekit.search.evaluate import rename_by_order
from edgekit.targets import Target


class FrozenMap(Mapping):
    """A read-only, hashable mapping (sorted items), so candidates can be set members and dict keys."""

    __slots__ = ("_dict", "_items")

    def __init__(self, items: Mapping | None = None) -> None:
        self._items = tuple(sorted(dict(items or {}).items()))
        self._dict = dict(self._items)

    def __getitem__(self, key):
        return self._dict[key]

    def __iter__(self) -> Iterator:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return repr(dict(self._items))


def align(channels: int, alignment: int, total: int) -> int:
    """The allowed kept count nearest `channels`: a multiple of `alignment` (never below it) or `total`
    itself (always allowed); never above `total`. Ties keep more."""
    if alignment < 1 or total < 1:
        raise BadInput(f"align: alignment ({alignment}) and total ({total}) must be positive")
    allowed = [*range(alignment, total, alignment), total]
    return min(allowed, key=lambda c: (abs(c - channels), -c))


def keep_choices(group: PruneGroup, alignment: int, min_keep: float = 0.25) -> tuple[int, ...]:
    """Allowed kept counts for a group, ascending: multiples of `alignment` from about
    min_keep * channels, and the whole group. An attention group keeps whole heads (at least one):
    a head's width is the kernel's inner dimension, so the count of heads needs no alignment."""
    if not 0 < min_keep <= 1:
        raise BadInput(f"min_keep must be in (0, 1], not {min_keep}")
    if alignment < 1:
        raise BadInput(f"alignment must be positive, not {alignment}")
    if group.heads:
        return tuple(k * group.unit for k in range(max(1, math.ceil(min_keep * group.heads)), group.heads + 1))
    start = max(alignment, math.ceil(min_keep * group.channels / alignment) * alignment)
    return (*range(start, group.channels, alignment), group.channels)


def alignment_for(target: Target, precisions) -> int:
    """The channel multiple for layers that may run in any of `precisions`: the largest of theirs."""
    precisions = tuple(precisions) or tuple(target.precisions.supported)
    missing = [p for p in precisions if p not in target.alignment]
    if missing:
        raise BadInput(f"target {target.name} has no channel alignment for {', '.join(missing)}")
    return max(target.alignment[p] for p in precisions)


@dataclass(frozen=True)
class Candidate:
    """One point of the space: kept channels per group (omitted: all), a precision per ONNX layer
    (omitted: `default_precision`), blocks dropped and layers factorized to a rank. Hashable; `key()`
    names it stably for caches and Optuna (a candidate without drops or ranks keys as it always did)."""

    keep: Mapping[str, int] = field(default_factory=FrozenMap)
    precision: Mapping[str, str] = field(default_factory=FrozenMap)
    default_precision: str = "fp32"
    drop: tuple[str, ...] = ()
    rank: Mapping[str, int] = field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", FrozenMap(self.keep))
        object.__setattr__(self, "precision", FrozenMap(self.precision))
        object.__setattr__(self, "drop", tuple(sorted(set(self.drop))))
        object.__setattr__(self, "rank", FrozenMap(self.rank))

    @property
    def structural(self) -> bool:
        """Whether the candidate changes the graph (drops or factorizations), not only channel counts."""
        return bool(self.drop or self.rank)

    @property
    def pruned(self) -> bool:
        """Whether the candidate's weights differ from the original's (channels cut, blocks dropped, layers
        factorized): only then is there anything to distil."""
        return bool(self.keep) or self.structural

    def as_dict(self) -> dict:
        out = {"keep": dict(self.keep), "precision": dict(self.precision), "default_precision": self.default_precision}
        if self.drop:
            out["drop"] = list(self.drop)
        if self.rank:
            out["rank"] = dict(self.rank)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> Candidate:
        try:
            keep = {str(k): int(v) for k, v in dict(data.get("keep") or {}).items()}
            precision = {str(k): str(v) for k, v in dict(data.get("precision") or {}).items()}
            rank = {str(k): int(v) for k, v in dict(data.get("rank") or {}).items()}
            return cls(keep, precision, str(data.get("default_precision", "fp32")),
                       tuple(str(b) for b in data.get("drop") or ()), rank)
        except (TypeError, ValueError, AttributeError) as err:
            raise BadInput(f"not a candidate: {err}") from err

    def key(self) -> str:
        """12 hex characters of the candidate's canonical JSON: the same candidate, the same key."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Space:
    groups: tuple[PruneGroup, ...]
    choices: Mapping[str, tuple[int, ...]]  # group name → allowed kept channel counts, ascending
    layers: tuple[str, ...]  # the ONNX quantizable layers, in graph order
    precisions: tuple[str, ...]  # the target's supported precisions
    alignment: int = 1
    lowrank: Mapping[str, tuple[int, ...]] = field(default_factory=FrozenMap)  # module → ranks that save MACs
    droppable: tuple[str, ...] = ()  # residual blocks that can be removed whole (edgekit.compress.drop)

    def as_dict(self) -> dict:
        return {"groups": [g.as_dict() for g in self.groups], "choices": {k: list(v) for k, v in self.choices.items()},
                "layers": list(self.layers), "precisions": list(self.precisions), "alignment": self.alignment,
                "lowrank": {k: list(v) for k, v in self.lowrank.items()}, "droppable": list(self.droppable)}

    def candidate(self, keep: Mapping[str, int] | None = None, precision: Mapping[str, str] | None = None,
                  default_precision: str | None = None) -> Candidate:
        """A checked, canonical candidate: whole groups and default precisions are left out, so two
        spellings of one model share a key."""
        default = default_precision or ("fp32" if "fp32" in self.precisions else self.precisions[0])
        channels = {g.name: g.channels for g in self.groups}
        for name, count in (keep or {}).items():
            if name not in self.choices:
                raise BadInput(f"candidate: '{name}' is not a prunable group of the space")
            if isinstance(count, bool) or not isinstance(count, int) or count not in self.choices[name]:
                raise BadInput(f"candidate: group '{name}' keeps {count}; allowed: {list(self.choices[name])}")
        for layer, p in [("default", default), *(precision or {}).items()]:
            if layer != "default" and layer not in self.layers:
                raise BadInput(f"candidate: '{layer}' is not a quantizable layer of the model")
            if p not in self.precisions:
                raise BadInput(f"candidate: precision '{p}' for {layer} is not one of {', '.join(self.precisions)}")
        return Candidate({k: v for k, v in (keep or {}).items() if v != channels[k]},
                         {k: v for k, v in (precision or {}).items() if v != default}, default)

    def uniform(self, ratio: float, default_precision: str | None = None) -> Candidate:
        """Every group keeps the allowed count nearest `ratio` of its channels."""
        if not 0 < ratio <= 1:
            raise BadInput(f"keep ratio must be in (0, 1], not {ratio}")
        keep = {g.name: min(self.choices[g.name], key=lambda c, g=g: (abs(c - ratio * g.channels), -c))
                for g in self.groups}
        return self.candidate(keep, None, default_precision)


def active(group: PruneGroup, candidate: Candidate) -> bool:
    """Whether any of the group's layers is still there (not inside a dropped block)."""
    return any(not any(m == b or m.startswith(b + ".") for b in candidate.drop) for m in group.modules)


def example_tensors(loaded: LoadedModel) -> tuple:
    """The model's example inputs as torch tensors, in input order."""
    import torch

    return tuple(torch.from_numpy(loaded.example[s.name]) for s in loaded.inputs)


def _prunable(loaded: LoadedModel) -> bool:
    import torch

    return loaded.kind == "torch" and isinstance(loaded.module, torch.nn.Module) \
        and not isinstance(loaded.module, torch.jit.ScriptModule)


def _lowrank_choices(module, alignment: int) -> FrozenMap:
    import torch.nn as nn

    out = {}
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) == (1, 1)
                                            and layer.groups == 1):
            ranks = rank_choices(layer, alignment)
            if ranks:
                out[name] = ranks
    return FrozenMap(out)


def build_space(loaded_model: LoadedModel, onnx_path: Path, target: Target, *, min_keep: float = 0.25,
                ignored: tuple[str, ...] = (), lowrank: bool = True, drop: bool = True) -> Space:
    """The space for one model on one target. ONNX and TorchScript models cannot be pruned here: their
    space holds precisions only. Low-rank ranks are multiples of the alignment that save MACs; a layer
    whose output is the model's (a classifier) is never factorized."""
    import onnx

    precisions = tuple(target.precisions.supported)
    alignment = alignment_for(target, precisions)
    try:
        layers = tuple(quantizable_layers(onnx.load(str(onnx_path))))
    except Exception as err:
        raise BadInput(f"{onnx_path} is not a readable ONNX model ({type(err).__name__})") from err
    groups: tuple[PruneGroup, ...] = ()
    ranks = FrozenMap()
    blocks: tuple[str, ...] = ()
    if _prunable(loaded_model):
        example = example_tensors(loaded_model)
        groups = tuple(prune_groups(loaded_model.module, example, ignored=tuple(ignored)))
        if lowrank:
            outputs = set(output_layers(loaded_model.module, example)) | set(ignored)
            ranks = FrozenMap({n: r for n, r in _lowrank_choices(loaded_model.module, alignment).items() if n not in outputs})
        if drop:
            blocks = tuple(droppable_blocks(loaded_model.module, example))
    choices = FrozenMap({g.name: keep_choices(g, alignment, min_keep) for g in groups})
    return Space(groups, choices, layers, precisions, alignment, ranks, blocks)


def _state_sha256(module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def materialize(loaded_model: LoadedModel, candidate: Candidate) -> LoadedModel:
    """The candidate's model: a pruned copy (the original untouched), same inputs and example, spec
    suffixed `#pruned`, sha256 of the pruned weights. A candidate that prunes nothing gives the model
    itself, not a copy. Precisions are the build's business, not this."""
    if not candidate.pruned:
        return loaded_model
    if not _prunable(loaded_model):
        raise BadInput(f"model {loaded_model.spec}: only a PyTorch nn.Module can be pruned")
    module = apply(loaded_model.module, example_tensors(loaded_model), candidate)
    return replace(loaded_model, spec=f"{loaded_model.spec}#pruned", module=module, sha256=_state_sha256(module))


def apply(module, example: tuple, candidate: Candidate, groups: tuple[PruneGroup, ...] = ()):
    """The candidate's structure on a copy of `module`: channels pruned first (group names are the
    unchanged model's), then layers factorized, then blocks dropped. `groups`: the space's, to find a
    group again in a model already changed (edgekit.compress.prune.prune's `like`)."""
    out = module
    if candidate.keep:
        out = prune(out, example, dict(candidate.keep), like=groups)
    if candidate.rank:
        out = factorize(out, dict(candidate.rank))
    if candidate.drop:
        out = drop_blocks(out, candidate.drop)
    return out.eval() if out is not module else out


def layer_names_map(original_onnx: Path, pruned_onnx: Path) -> dict[str, str]:
    """Original quantizable layer name → the pruned export's name for the same layer, matched by graph
    order and op type; Failure if the two graphs' quantizable layers do not line up."""
    pruned_to_original = rename_by_order(graph.layer_table(original_onnx), graph.layer_table(pruned_onnx))
    return {original: pruned for pruned, original in pruned_to_original.items()}
