"""`edgekit targets`: the device registry, shipped targets and the user's."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgekit.cli.console import out, print_json
from edgekit.cli.options import JsonOut, TargetsDir

# Library modules are imported inside the commands, so that `edgekit --help` loads none of them.

app = typer.Typer(no_args_is_help=True, help="The device registry (targets/*.yaml).")


@app.command("list")
def targets_list(targets_dir: TargetsDir = None, as_json: JsonOut = False) -> None:
    """Every known target (shipped and yours)."""
    from edgekit.targets import list_targets

    targets = list_targets(targets_dir or [])
    if as_json:
        print_json([t.model_dump(mode="json") for t in targets])
        return
    table = Table(title="edgekit targets")
    for col in ("name", "aliases", "vendor", "backend", "precisions (fast)", "peak GOPS"):
        table.add_column(col)
    for t in targets:
        table.add_row(t.name, ", ".join(t.aliases), t.vendor, t.backend.name,
                      f"{', '.join(t.precisions.supported)} ({', '.join(t.precisions.fast)})",
                      ", ".join(f"{p} {v:g}" for p, v in t.peak_gops.items()))
    out.print(table)


@app.command("show")
def targets_show(name: Annotated[str, typer.Argument(help="Target name, alias or YAML file.")],
                 targets_dir: TargetsDir = None, as_json: JsonOut = False) -> None:
    """One target's facts and where each figure comes from."""
    import yaml

    from edgekit.targets import load_target

    target = load_target(name, targets_dir or [])
    data = target.model_dump(mode="json")
    if as_json:
        print_json(data)
        return
    facts = {k: v for k, v in data.items()
             if k not in ("reference_latencies", "reference_latencies_note", "reference_latencies_from", "latency_floor")}
    out.print(yaml.safe_dump(facts, sort_keys=False, allow_unicode=True, width=120).rstrip())
    _print_reference_latencies(target)
    _print_floor(target)


def _print_floor(target) -> None:
    """The least one inference takes with the target's runtime: no prediction goes below it (or why none)."""
    floor = target.latency_floor
    if floor is None:
        return
    if not floor.figured:
        out.print(f"\n[bold]latency floor[/bold]: none for {target.backend.name}. {floor.reason}", soft_wrap=True)
        return
    out.print(f"\n[bold]latency floor[/bold]: {floor.per_inference_ms:g} ms per inference + {floor.per_layer_ms:g} ms "
              f"per compute layer; no prediction for {target.name} goes below it (`edgekit estimate` says when it "
              f"decides). Source: {floor.source}, {floor.date}, {floor.url}. {floor.note}", soft_wrap=True)


def _print_reference_latencies(target) -> None:
    """The published latencies of standard models on the device (the anchors of its predictions), or why none."""
    if not target.reference_latencies:
        why = target.reference_latencies_note or "none given in its file"
        out.print(f"\n[bold]reference latencies[/bold]: none for {target.name}. {why}", soft_wrap=True)
        if target.reference_latencies_from:
            out.print(f"Its predictions borrow the fit of {target.reference_latencies_from} (`edgekit targets show "
                      f"{target.reference_latencies_from}`), with a wider bound.", soft_wrap=True)
        return
    table = Table(title=f"reference latencies: published measurements on {target.name}")
    for col in ("model", "input", "batch", "precision", "runtime", "figure", "source"):
        table.add_column(col, overflow="fold")
    for ref in target.reference_latencies:
        figure = f"{ref.value:g} {ref.unit} ({ref.which})"
        source = ref.source + (f", {ref.date}" if ref.date else "")
        runtime = ref.runtime + (f" {ref.runtime_version}" if ref.runtime_version else "")
        table.add_row(ref.model, ref.input, "-" if ref.batch is None else str(ref.batch), ref.precision, runtime,
                      figure, source)
    out.print(table)
    if target.reference_latencies_note:
        out.print(target.reference_latencies_note, soft_wrap=True)
