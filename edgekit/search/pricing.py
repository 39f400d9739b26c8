"""A candidate's price before it is built: predicted latency and memory, from its layers' precisions read
under whichever export's layer names are at hand."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit import cost
from edgekit.latency_table import LatencyTable
from edgekit.models import LoadedModel
from edgekit.search import evaluate, fixed_point
from edgekit.search.context import Original, SearchContext
from edgekit.search.space import Space


@dataclass(frozen=True)
class Pricing:
    """What the walk prices candidates with: the cost model (or the hls4ml design estimate) and the
    original's layer names, which every candidate's precisions are written in."""

    loaded: LoadedModel
    space: Space
    reference: list  # the original export's layer table: the names the candidates' plans are written in
    fast_reference: list  # the original module's fast export (evaluate.fast_layer_table)
    fast_to_reference: dict[str, str]  # its layer names → the reference's, by graph order
    design: fixed_point.DesignCost | None  # fixed point: edgekit's estimate of the hls4ml design prices it
    model_cost: cost.CostModel  # learns from every measurement (the closed loop)

    def precisions_of(self, candidate, layers) -> dict[str, str]:
        """The candidate's precisions by the layer names of a fast export of one of its modules."""
        if not candidate.structural:
            names = evaluate.rename_by_order(self.reference, layers)
        else:  # the graph changed: through the fast export's scoped names
            names = {ours: self.fast_to_reference[theirs]
                     for ours, theirs in evaluate.carry_names(self.fast_reference, layers).items()}
        return {ours: candidate.precision.get(theirs, candidate.default_precision) for ours, theirs in names.items()}

    def built_precisions(self, candidate, module, built_layers) -> dict[str, str]:
        """Precisions by the built export's layer names (torch.export names: matched by graph order, through
        the fast export's scoped names where the graph changed)."""
        if not candidate.structural:
            names = evaluate.rename_by_order(self.reference, built_layers)
            return {ours: candidate.precision.get(theirs, candidate.default_precision) for ours, theirs in names.items()}
        fast = evaluate.fast_layer_table(module, self.loaded)
        of_fast = self.precisions_of(candidate, fast)
        return {ours: of_fast.get(theirs, candidate.default_precision)
                for ours, theirs in evaluate.rename_by_order(fast, built_layers).items()}

    def bound_factor(self, candidate, module) -> float | None:
        """Off the device, the factor of the bound of the candidate's predicted latency (edgekit.anchored); None
        where a measurement judges, or where the prediction has no bound (no anchors; the FPGA design estimate)."""
        if self.design is not None:
            return None
        layers = evaluate.fast_layer_table(module, self.loaded)
        return self.model_cost.bound_factor(layers, self.precisions_of(candidate, layers), candidate.default_precision)

    def predict(self, candidate, module) -> tuple[float, float]:
        """Predicted latency (ms) and memory (MB) of the candidate's module."""
        if self.design is not None:
            return self.design.predict(module, [candidate.precision.get(n, candidate.default_precision)
                                                for n in self.space.layers])
        layers = evaluate.fast_layer_table(module, self.loaded)
        precisions = self.precisions_of(candidate, layers)
        memory = cost.estimate_memory(layers, precisions, candidate.default_precision).total_mb
        return self.model_cost.predict_ms(layers, precisions, candidate.default_precision), memory


def pricing_for(ctx: SearchContext, original: Original, design: fixed_point.DesignCost | None) -> Pricing:
    """The cost model of the target (its table timed on the device where one is given) and the original's
    layer names in both exports."""
    model_cost = cost.CostModel(ctx.target, ctx.backend_name, table=LatencyTable(ctx.target, ctx.backend_name, measurer=ctx.measurer),
                                scope=cost.scope_of(original.layers), scale_ms=original.anchor and original.anchor.p50_ms)
    fast_reference = evaluate.fast_layer_table(ctx.teacher, ctx.loaded)
    return Pricing(ctx.loaded, original.space, original.layers, fast_reference,
                   evaluate.rename_by_order(original.layers, fast_reference), design, model_cost)

