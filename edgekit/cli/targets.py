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

    data = load_target(name, targets_dir or []).model_dump(mode="json")
    if as_json:
        print_json(data)
    else:
        out.print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120).rstrip())
