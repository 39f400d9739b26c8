"""The search on fixed-point targets (FPGAs through hls4ml): precisions are bit widths, 4 to 16.

A layer's width changes no weight, so nothing is fine-tuned; its price is estimated, like int8's on the
other targets, from a sensitivity table: the validation accuracy lost when that layer alone runs in the
narrower width, simulated in PyTorch with the formats hls4ml is given (weights and results rounded to
nearest and saturated in ap_fixed<W,I>, I from the observed ranges: edgekit.backends.hls4ml_config).
The latency is edgekit's estimate of the hls4ml design (hls4ml_estimate.py): the candidate converted with the same config the build writes
(reuse factors from the DSP budget, folded until the BRAM fits), without compiling, about 0.2 s each.
Narrower words shrink weight ROMs, stream FIFOs and line buffers, so fewer folds: lower latency. The
candidate the search ships is then built and checked in hls4ml's C simulation, bit-accurate.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from edgekit.backends.hls4ml_config import fitted, multiply_nodes, width_of
from edgekit.backends.hls4ml_graph import Range, observe, prepare
from edgekit.backends.hls4ml_project import DesignEstimator
from edgekit.data import Samples
from edgekit.models import LoadedModel
from edgekit.plan import FLOATS, bits
from edgekit.search import evaluate
from edgekit.targets import Target

RANGE_SAMPLES = 128  # calibration samples whose ranges set the formats while searching (the build uses all)


def is_fixed_point(target: Target) -> bool:
    """The target runs integer widths only (no float to keep a layer in): FPGAs."""
    return not set(target.precisions.supported) & set(FLOATS)


def widths(target: Target) -> list[str]:
    """The target's widths, widest first."""
    return sorted(target.precisions.supported, key=lambda p: -(bits(p) or 0))


def narrower(precision: str, target: Target) -> str | None:
    """The next width below `precision` the target offers (None at the narrowest)."""
    ladder = widths(target)
    at = ladder.index(precision) if precision in ladder else len(ladder)
    return ladder[at + 1] if at + 1 < len(ladder) else None


def _prepared(module, loaded: LoadedModel, calibration: dict[str, np.ndarray]):
    prepared = prepare(copy.deepcopy(module), loaded.inputs, loaded.example)
    observe(prepared, {k: v[:RANGE_SAMPLES] for k, v in calibration.items()})
    return prepared


class DesignCost:
    """Latency and on-chip memory of a candidate, from edgekit's estimate of the hls4ml design (predicted)."""

    def __init__(self, target: Target, loaded: LoadedModel, calibration: dict[str, np.ndarray]) -> None:
        self.target, self.loaded, self.calibration = target, loaded, calibration
        self.folder = Path(tempfile.mkdtemp(prefix="edgekit-hls4ml-"))  # the scratch project, gone with this object
        weakref.finalize(self, shutil.rmtree, self.folder, True)
        self.estimator = DesignEstimator(target, self.folder)
        self.last: dict | None = None

    def predict(self, module, layer_widths: list[str]) -> tuple[float, float]:
        """(latency ms, BRAM MB) of `module` with its multiplying layers in `layer_widths` (graph order)."""
        prepared = _prepared(module, self.loaded, self.calibration)
        options = self.target.backend.options
        fx = multiply_nodes(prepared)
        per_layer = {name: width_of(p, options) for name, p in zip(fx, layer_widths, strict=True)}
        est = self.estimator.estimate(prepared, per_layer)
        self.last = est
        return est["latency_ms"], bram_mb(est["used"]["bram36"])

    def capacity_mb(self) -> float | None:
        """The part's block RAM, in MB: the memory budget where the user gives none."""
        bram = self.target.backend.options.get("bram36")
        return bram_mb(int(bram)) if bram else None


def widest_fitting(design: DesignCost, module, layers: int) -> str:
    """The widest width at which the whole model, every layer in it, fits the part (else the narrowest:
    then the walk must prune until it fits)."""
    ladder = widths(design.target)
    for precision in ladder:
        design.predict(module, [precision] * layers)
        if design.last["fits"]:
            return precision
    return ladder[-1]


def bram_mb(bram36: int) -> float:
    return bram36 * 36 * 1024 / 8 / 2**20


def _quantize(x, width: int, low: float, high: float):
    """Round to nearest and saturate in the ap_fixed format of `width` bits that holds [low, high]."""
    import torch

    fmt = fitted(width, Range(low, high))
    step = 2.0 ** -fmt.fraction
    top = 2.0 ** (fmt.integer - int(fmt.signed)) - step
    bottom = -(2.0 ** (fmt.integer - 1)) if fmt.signed else 0.0
    return torch.clamp(torch.round(x / step) * step, bottom, top)


def simulated(prepared, layer_widths: dict[str, int]):
    """A copy of the prepared (BatchNorm-folded) module whose multiplying layers in `layer_widths` run in
    fixed point: weights and results rounded into their ap_fixed formats; the rest stays float."""
    import torch

    gm = copy.deepcopy(prepared.module)
    for name, width in layer_widths.items():
        node = next(n for n in gm.graph.nodes if n.name == name)
        layer = gm.get_submodule(node.target)
        with torch.no_grad():
            w = layer.weight
            bound = float(w.abs().max())
            w.copy_(_quantize(w, width, -bound, bound))
        seen = prepared.ranges.get(name)
        if seen is not None:
            layer.register_forward_hook(lambda _m, _i, out, lo=seen.low, hi=seen.high, w=width: _quantize(out, w, lo, hi))
    return gm


def sensitivity(module, loaded: LoadedModel, calibration: dict[str, np.ndarray], validation: Samples,
                layers: list[str], target: Target, reference: np.ndarray) -> dict:
    """{layer: {width: validation accuracy lost, as a fraction}} for each multiplying layer (by the ONNX
    names `layers`, in graph order) alone in each width narrower than the widest."""
    prepared = _prepared(module, loaded, calibration)
    fx = multiply_nodes(prepared)
    options = target.backend.options
    base = evaluate.score(evaluate.outputs(prepared.module, validation, loaded), validation, reference)
    table: dict[str, dict[str, float]] = {}
    for onnx_name, fx_name in zip(layers, fx, strict=True):
        table[onnx_name] = {}
        for precision in widths(target)[1:]:
            sim = simulated(prepared, {fx_name: width_of(precision, options)})
            acc = evaluate.score(evaluate.outputs(sim, validation, loaded), validation, reference)
            table[onnx_name][precision] = max(base - acc, 0.0)
    return {"how": "each layer alone in the narrower width, simulated in PyTorch with hls4ml's formats "
                   f"(ranges from {RANGE_SAMPLES} calibration samples), validation accuracy lost",
            "base_accuracy": base, "layers": table}


def penalty(candidate, table: dict) -> float:
    """The accuracy a candidate's widths are estimated to cost: the sum of its layers' losses."""
    losses = table.get("layers", {})
    return sum(losses.get(layer, {}).get(p, 0.0) for layer, p in candidate.precision.items())


def moves(candidate, layers: list[str], target: Target) -> list[tuple[object, str]]:
    """Each layer one width narrower (the search's precision moves on a fixed-point target)."""
    out = []
    for layer in layers:
        lower = narrower(candidate.precision.get(layer, candidate.default_precision), target)
        if lower is not None:
            out.append((dataclasses.replace(candidate, precision={**candidate.precision, layer: lower}), layer))
    return out

