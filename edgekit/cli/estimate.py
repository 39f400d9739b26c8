"""`edgekit estimate`: a model's predicted latency on a target, with its bound, without building anything."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgekit.cli.console import exit_on_missed_budget, out, print_json
from edgekit.cli.options import InputShape, JsonOut, TargetName, TargetsDir

# Library modules are imported inside the command, so that `edgekit --help` loads none of them.


def estimate(
    target: TargetName,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model spec (default: the digits demo).")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, fp16 or int8 (default: what deploy builds).")] = None,
    latency_budget_ms: Annotated[float | None, typer.Option(help="Judge this p50 budget on the prediction: met only "
                                                            "if its upper bound meets it (else exit 4, uncertain).")] = None,
    input_shape: InputShape = None,
    targets_dir: TargetsDir = None,
    as_json: JsonOut = False,
) -> None:
    """Predict a model's latency on a target from its published anchors, with the bound they vouch for."""
    from edgekit.estimate import estimate as run

    result = run(target, model, precision, input_shapes=input_shape, targets_dir=targets_dir,
                 latency_budget_ms=latency_budget_ms)
    if as_json:
        print_json(result.as_dict())
    else:
        _print(result)
    if result.budget is not None:
        exit_on_missed_budget(result.budget.verdict)


def _print(result) -> None:
    lat, fit = result.latency, result.fit
    table = Table(title=f"edgekit estimate: {result.model} on {result.target} ({result.precision}), predicted", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    bound = (f" (bound {lat['low']:.4g} - {lat['high']:.4g} ms)" if lat.get("high") is not None
             else " (no bound: a floor, no published anchors)")
    table.add_row("latency p50", f"{lat['p50']:.4g} ms predicted{bound}")
    table.add_row("roofline", f"{result.roofline_ms:.4g} ms (peak rate and bandwidth alone)")
    if fit is not None:
        table.add_row("model", fit["describe"])
        table.add_row("anchors", "; ".join(f"{a['model']} {a['input']} {a['precision']}: {a['ms']:.4g} ms published, "
                                           f"{a['fitted_ms']:.4g} fitted" for a in fit["anchors"]))
        table.add_row("outside", f"{result.outside_decades:.2f} decades outside the anchors (size + mix)")
        for note in fit["notes"]:
            table.add_row("note", note)
    _floor_rows(table, result.floor)
    table.add_row("memory", f"{result.memory_mb:.4g} MB (weights + peak activations)")
    if result.budget is not None:
        b = result.budget
        table.add_row("budget", f"{b.budget:g} ms: {b.verdict}")
    table.add_row("device", result.device)
    out.print(table)
    out.print(f"latency: {lat['source']}")


def _floor_rows(table: Table, floor: dict | None) -> None:
    """The runtime's per-inference floor: whether it decided the prediction, and its source."""
    if floor is None:
        return
    if "reason" in floor:
        table.add_row("floor", f"none published for this runtime: {floor['reason']}")
        return
    decided = "decided the prediction" if floor["decided"] else "below the prediction"
    table.add_row("floor", f"{floor['ms']:.4g} ms, {decided} ({floor['per_inference_ms']:g} ms per inference + "
                           f"{floor['per_layer_ms']:g} ms x {floor['compute_layers']} compute layers)")
    table.add_row("floor source", f"{floor['source']}, {floor['date']}, {floor['url']}")



