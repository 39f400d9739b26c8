"""`edgekit estimate`: a model's predicted latency on a target, with its bound, without building anything.

What a user deciding which board to buy, or whether a model fits a budget before the board arrives, asks: the
target's latency model anchored on its published measurements (edgekit.anchored) and its devices' own, the bound
they vouch for, how far the model lies outside them, the runtime's per-inference floor and whether it decided, the
bare roofline beside it, and the memory the model needs. The model is exported to ONNX and its layer table read,
exactly as deploy does; no runtime runs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgekit import anchored, cost, graph, roofline
from edgekit.budget import BudgetVerdict, judge_latency
from edgekit.deploy.request import choose_precision
from edgekit.errors import BadInput
from edgekit.models import load_model
from edgekit.targets import Target, load_target


@dataclass(frozen=True)
class Estimate:
    model: str
    target: str
    device: str
    precision: str
    latency: dict  # Latency.as_dict(): kind "predicted", p50, low/high where the target has anchors
    roofline_ms: float  # the floor: peak rate and bandwidth alone
    outside_decades: float | None  # how far the model lies outside the anchors (size + mix); None without anchors
    fit: dict | None  # the target's fit: terms, parameters, anchors, leave-one-out errors, factor, notes
    memory_mb: float
    budget: BudgetVerdict | None = None
    floor: dict | None = None  # the runtime's per-inference floor: ms, whether it decided p50, its source; or why none

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "budget"}
        return out | ({"budget": self.budget.as_dict() | {"verdict": self.budget.verdict}} if self.budget else {})


def estimate(target_name: str, model_spec: str | None = None, precision: str | None = None, *,
             input_shapes: list[str] | None = None, targets_dir: list[Path] | None = None,
             latency_budget_ms: float | None = None) -> Estimate:
    """The model (default: the digits demo) on the target in `precision` (default: what deploy would build)."""
    if latency_budget_ms is not None and not latency_budget_ms > 0:
        raise BadInput(f"--latency-budget-ms must be positive, got {latency_budget_ms}")
    target = load_target(target_name, targets_dir)
    chosen = choose_precision(precision, target)
    loaded = load_model(model_spec, input_shapes)
    with tempfile.TemporaryDirectory() as tmp:
        layers = graph.layer_table(graph.export_onnx(loaded, Path(tmp) / "model.onnx"))
    fit = anchored.fit_for(target)
    latency = anchored.predict(layers, target, chosen, fit)
    feats = anchored.features(layers, target, chosen)
    away = anchored.outside(fit, feats) if fit else None
    fit_record = None if fit is None else {
        **{k: v for k, v in fit.as_dict().items() if k not in ("fingerprint", "skipped")}, "describe": anchored.describe(fit)}
    budget = (judge_latency("latency_ms", latency_budget_ms, latency.as_dict()) if latency_budget_ms is not None else None)
    return Estimate(loaded.name, target.name, target.device, chosen, latency.as_dict(),
                    roofline.predict_latency(layers, target, chosen).p50, away, fit_record,
                    cost.predict_memory_mb(layers, chosen)["total_mb"], budget,
                    floor_record(target, feats["compute_layers"], latency.p50))


def floor_record(target: Target, compute_layers: int, p50: float) -> dict | None:
    """The target's floor for a model of `compute_layers` and whether it decided `p50` (None where the target has
    no `latency_floor`; only its reason where no figure was published)."""
    floor = target.latency_floor
    if floor is None or not floor.figured:
        return None if floor is None else {"reason": floor.reason}
    ms = floor.ms(compute_layers)
    return {"ms": ms, "decided": p50 <= ms, "per_inference_ms": floor.per_inference_ms, "per_layer_ms": floor.per_layer_ms,
            "compute_layers": compute_layers, "source": floor.source, "url": floor.url, "date": floor.date,
            "note": floor.note}
