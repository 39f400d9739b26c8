"""Size actions for flash-bound targets: unstructured magnitude pruning and k-means weight sharing,
judged by the measured, compressed size of the files a runtime would ship.

Neither action makes a float32 file smaller by itself: a zero or a shared value still takes 4 bytes.
They pay once the bundle is compressed (an app package, an OTA image), so the size a flash budget is
checked against is `stored_size` of the exported files, measured, never estimated.
"""

from __future__ import annotations

import copy
import lzma
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from edgekit.budget import judge
from edgekit.compress.distill import DistillReport, DistillSettings, distill
from edgekit.errors import BadInput

MB = 2**20
XZ_PRESET = 6  # xz's own default level


@dataclass(frozen=True)
class Action:
    """One rung: zero this fraction of the weights, then (optionally) share this many values per layer."""

    sparsity: float = 0.0
    clusters: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# Mildest first. Each rung keeps the previous rung's zeros and adds to them (clustering comes last, on
# top of the strongest sparsity), so the first rung that fits is also the least harmful one that fits.
LADDER = (Action(0.0), Action(0.3), Action(0.5), Action(0.7), Action(0.8), Action(0.9),
          Action(0.9, 64), Action(0.9, 16))


@dataclass(frozen=True)
class Size:
    raw_bytes: int
    compressed_bytes: int

    @property
    def raw_mb(self) -> float:
        return self.raw_bytes / MB

    @property
    def compressed_mb(self) -> float:
        return self.compressed_bytes / MB

    def as_dict(self) -> dict:
        return {"raw_bytes": self.raw_bytes, "compressed_bytes": self.compressed_bytes,
                "compressed_mb": round(self.compressed_mb, 6)}


@dataclass(frozen=True)
class Step:
    action: Action
    compressed_mb: float
    met: bool
    finetuned: bool

    def as_dict(self) -> dict:
        return {"action": self.action.as_dict(), "compressed_mb": round(self.compressed_mb, 6), "met": self.met,
                "finetuned": self.finetuned}


@dataclass(frozen=True)
class ShrinkResult:
    module: object  # the chosen nn.Module (a copy), in eval mode
    action: Action
    size: Size  # measured on `module`'s export
    met: bool
    steps: tuple[Step, ...]  # one per rung tried, in order (the chosen rung: its fine-tuned measurement)
    finetune: DistillReport | None  # None when nothing was fine-tuned (the dense model fits, or nothing fits)

    def as_dict(self) -> dict:
        return {"action": self.action.as_dict(), "size": self.size.as_dict(), "met": self.met,
                "steps": [s.as_dict() for s in self.steps],
                "finetune": self.finetune.as_dict() if self.finetune else None}


def _weighted(module, layers: Iterable[str] | None) -> dict:
    """Conv/Linear layers by qualified name (all, or those named); biases and norms are never touched."""
    import torch.nn as nn

    found = {n: m for n, m in module.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}
    if layers is None:
        return found
    layers = list(layers)
    unknown = [n for n in layers if n not in found]
    if unknown:
        raise BadInput(f"{unknown} are not Conv/Linear layers of the model (layers: {', '.join(found) or 'none'})")
    return {n: found[n] for n in layers}


def _bake(layer) -> None:
    """Make a pruning mask permanent; masked negatives would be -0.0, whose bytes compress apart from 0.0."""
    import torch.nn.utils.prune as tprune

    tprune.remove(layer, "weight")
    layer.weight.data.masked_fill_(layer.weight.data == 0, 0.0)


def _zeros(layer) -> float:
    return float((layer.weight == 0).float().mean())


def sparsify(module, sparsity: float, *, layers: Iterable[str] | None = None,
             scope: Literal["global", "layer"] = "global") -> dict[str, float]:
    """Zero the smallest-magnitude weights of Conv/Linear layers in place, `sparsity` of them across the
    layers ("global": big layers of small weights give most, which is where the bytes are) or in each
    layer. Zeros already there count (a sparse model sparsified further keeps them). No masks stay on
    the module: it exports as is. Returns the fraction of zeros per layer."""
    import torch.nn.utils.prune as tprune

    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise BadInput(f"sparsify: sparsity must be in [0, 1), not {sparsity!r}")
    if scope not in ("global", "layer"):
        raise BadInput(f"sparsify: scope must be 'global' or 'layer', not {scope!r}")
    targets = _weighted(module, layers)
    if sparsity > 0 and targets:
        if scope == "global":
            tprune.global_unstructured([(m, "weight") for m in targets.values()], tprune.L1Unstructured,
                                       amount=float(sparsity))
        else:
            for m in targets.values():
                tprune.l1_unstructured(m, "weight", amount=float(sparsity))
        for m in targets.values():
            _bake(m)
    return {n: _zeros(m) for n, m in targets.items()}


def finetune_keeping(module, teacher, inputs: dict[str, np.ndarray], training: DistillSettings) -> DistillReport:
    """Distill `module` from `teacher` in place (see `distill`) without losing its zeros: each sparse
    layer is trained through torch's pruning reparametrisation (weight = weight_orig * mask, so the
    zeros get no gradient and stay zero), baked back into a plain weight afterwards."""
    import torch.nn.utils.prune as tprune

    masked = [m for m in _weighted(module, None).values() if bool((m.weight == 0).any())]
    for m in masked:
        tprune.custom_from_mask(m, "weight", m.weight.detach() != 0)
    try:
        return distill(module, teacher, inputs, training)
    finally:
        for m in masked:
            _bake(m)


def cluster(module, clusters: int = 16, *, layers: Iterable[str] | None = None) -> dict[str, int]:
    """Share weights in place: each Conv/Linear layer's weights become at most `clusters` distinct values
    (1-D k-means, scikit-learn), each weight its cluster's centroid. In a sparse layer 0 is one of them,
    fixed: zeros stay exactly zero and the others share `clusters - 1` centroids. Centroids start
    evenly spaced over the weights' range (linear init, which Han et al.'s Deep Compression found best:
    the rare large weights keep a centroid of their own) and the fit is deterministic. No fine-tune
    follows: training would undo the sharing. Returns the distinct values per layer."""
    import torch
    from sklearn.cluster import KMeans

    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 2:
        raise BadInput(f"cluster: clusters must be a whole number of at least 2, not {clusters!r}")
    counts = {}
    for name, m in _weighted(module, layers).items():
        w = m.weight.detach().cpu().numpy().astype(np.float64).ravel()
        keep = w != 0 if (w == 0).any() else np.ones(w.shape, bool)
        values, k = w[keep], clusters - int(not keep.all())
        if len(np.unique(values)) > k:
            init = np.linspace(values.min(), values.max(), k)[:, None]
            fit = KMeans(k, init=init, n_init=1, random_state=0).fit(values[:, None])
            w[keep] = fit.cluster_centers_.ravel()[fit.labels_]
        shared = torch.from_numpy(w.astype(np.float32)).view_as(m.weight)
        with torch.no_grad():
            m.weight.copy_(shared)
        counts[name] = int(torch.unique(m.weight.detach()).numel())
    return counts


def stored_size(paths: Iterable[Path]) -> Size:
    """The files' bytes, and their bytes after xz (LZMA2 at preset 6, xz's default), each file on its own.
    xz because compressed root filesystems (squashfs) and OTA/firmware images commonly use it; zlib at
    level 9 (zip, gzip) gives 10-25 % more on sparse or shared float32 weights, so a bundle packed with
    deflate needs that margin. A fixed preset keeps the measurement reproducible."""
    raw = packed = 0
    for path in paths:
        data = Path(path).read_bytes()
        raw += len(data)
        packed += len(lzma.compress(data, preset=XZ_PRESET))
    return Size(raw, packed)


def _candidate(module, action: Action, tune: dict | None) -> tuple[object, DistillReport | None]:
    """A fresh copy of `module` with `action` applied: sparsify, fine-tune keeping the zeros (when `tune`
    gives finetune_keeping's teacher, inputs and training), then share values (after training, which would
    undo the sharing)."""
    candidate = copy.deepcopy(module)
    report = None
    if action.sparsity > 0:
        sparsify(candidate, action.sparsity)
        if tune:
            report = finetune_keeping(candidate, **tune)
    if action.clusters:
        cluster(candidate, action.clusters)
    return candidate.eval(), report


def shrink_to_flash(module, teacher, inputs: dict[str, np.ndarray], export: Callable[[object], list[Path]],
                    budget_mb: float, *, training: DistillSettings, ladder: tuple[Action, ...] = LADDER) -> ShrinkResult:
    """The mildest rung of `ladder` whose exported files (`export(candidate)`, what the runtime ships)
    measure at most `budget_mb` MB (2**20 bytes) after compression (`stored_size`).

    Each rung is first measured without fine-tuning: fine-tuning changes the values of the weights
    left, not how many there are or how many are shared, so it barely moves the compressed size, and
    the whole fine-tune budget can go to the rung chosen. That rung is rebuilt from a fresh copy,
    distilled from `teacher` on `inputs` for up to `training.seconds` (and epochs), and measured again;
    the reported size is that measurement. Should it no longer fit, the next rung is tried with the
    seconds left. If no rung fits, the strongest comes back (not fine-tuned) with met=False.
    Deterministic for a seed when the epochs end before the seconds do."""
    if isinstance(budget_mb, bool) or not isinstance(budget_mb, (int, float)) or not budget_mb > 0:
        raise BadInput(f"flash budget must be a positive number of MB, not {budget_mb!r}")
    if not ladder:
        raise BadInput("shrink: the ladder has no rungs")
    seconds = training.seconds
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise BadInput(f"shrink: seconds must be positive, not {seconds!r}")
    steps: list[Step] = []
    left = float(seconds)
    for action in ladder:
        report = None
        candidate, _ = _candidate(module, action, None)
        size = stored_size(export(candidate))
        if not judge("flash_mb", budget_mb, size.compressed_mb, "measured (xz)").met:
            steps.append(Step(action, size.compressed_mb, False, False))
            continue
        if action.sparsity > 0 and left > 0:
            tune = {"teacher": teacher, "inputs": inputs, "training": replace(training, seconds=left)}
            candidate, report = _candidate(module, action, tune)
            left -= report.seconds
            size = stored_size(export(candidate))
        met = judge("flash_mb", budget_mb, size.compressed_mb, "measured (xz)").met
        steps.append(Step(action, size.compressed_mb, met, report is not None))
        if met:
            return ShrinkResult(candidate, action, size, True, tuple(steps), report)
    return ShrinkResult(candidate, action, size, False, tuple(steps), report)
