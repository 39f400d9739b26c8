"""`edgekit devices`: the inventory of real devices, and whether each one's agent answers."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from edgekit.cli.console import out, print_json
from edgekit.cli.options import DevicesFile, JsonOut

# Library modules are imported inside the commands, so that `edgekit --help` loads none of them.

app = typer.Typer(no_args_is_help=True, help="The device inventory: real devices reached through the edgekit agent.")


@app.command("list")
def devices_list(devices: DevicesFile = None, as_json: JsonOut = False) -> None:
    """Each device of the inventory, and whether its agent answers (asked once, briefly)."""
    from edgekit.devices import load_inventory, status

    inventory = load_inventory(devices)
    rows = [status(device) for device in inventory.devices]
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"edgekit devices ({inventory.file})")
    for col in ("name", "target", "url", "answers", "host / why not", "runtimes", "queue"):
        table.add_column(col)
    for row in rows:
        runtimes = ", ".join(f"{k} {v}" for k, v in (row.get("runtimes") or {}).items())
        table.add_row(row["name"], row["target"], row["url"], "yes" if row["answers"] else "[red]no[/]",
                      escape(row.get("hostname") or "") if row["answers"] else escape(row["error"]), runtimes,
                      str(row.get("queue", "")))
    out.print(table)
