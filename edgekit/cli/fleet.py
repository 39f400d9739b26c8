"""`edgekit fleet`: every device class of a manifest built, judged, bundled, signed and exported."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgekit.cli.console import err, out, print_json
from edgekit.cli.options import JsonOut, _folder_or_new

# Library modules are imported inside the commands, so that `edgekit --help` loads none of them.

app = typer.Typer(no_args_is_help=True, help="Fleets: one manifest, every device class built, bundled, signed, exported.")


@app.command("build")
def fleet_build(
    manifest: Annotated[Path, typer.Argument(help="fleet.yaml: the device classes, their models, data and budgets.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", callback=_folder_or_new,
                                          help="Where the bundles, signatures and OTA artifacts go.")] = Path("dist"),
    executor: Annotated[str, typer.Option(help="local (this machine) or ray (a local Ray instance, or $RAY_ADDRESS).")] = "local",
    jobs: Annotated[int, typer.Option(help="Local builds at once (measured builds need the machine to themselves: keep 1).")] = 1,
    key: Annotated[Path | None, typer.Option("--key", help="ed25519 signing key (default: the fleet's signing_key, made if missing).")] = None,
    cache: Annotated[Path | None, typer.Option("--cache", callback=_folder_or_new,
                                               help="Build cache folder (default: the user cache).")] = None,
    as_json: JsonOut = False,
) -> None:
    """Build every class of the fleet once per distinct build, judge its budgets, bundle, sign, export OTA."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from edgekit.fleet.build import build_fleet
    from edgekit.fleet.cache import BuildCache
    from edgekit.fleet.manifest import load_fleet

    fleet = load_fleet(manifest)
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[name]:<16}[/]"), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=err, transient=False) as progress:
        tasks = {name: progress.add_task("queued", name=name) for name in fleet.classes}

        def update(name: str, what: str) -> None:
            final = what.startswith(("FAILED", "exported", "bundled", "cached"))
            progress.update(tasks[name], description=escape(what), completed=1 if final else 0, total=1)

        summary = build_fleet(fleet, out_dir, executor=executor, jobs=jobs, key_path=key,
                              cache=BuildCache(cache) if cache else None, progress=update)
    if as_json:
        print_json(summary)
    else:
        table = Table(title=f"edgekit fleet {summary['fleet']} → {out_dir}")
        for col in ("class", "target", "version", "build", "budgets", "bundle", "OTA"):
            table.add_column(col)
        for name, c in summary["classes"].items():
            ota = ", ".join(k for k, v in c["ota"].items() if not v.startswith("skipped"))
            skipped = [k for k, v in c["ota"].items() if v.startswith("skipped")]
            table.add_row(name, c["target"], c["version"], c["state"] if not c["error"] else f"[red]{escape(c['error'])}[/]",
                          _budgets(c.get("budgets") or {}), Path(c["bundle"]).name if c["bundle"] else "–",
                          ota + (f" (skipped: {', '.join(skipped)})" if skipped else ""))
        out.print(table)
        what = (f"{summary['built']} built, {summary['cached']} from the cache (nothing changed: not rebuilt)"
                if summary["cached"] else f"{summary['built']} built")
        out.print(f"{what}; signed with {summary['key']} (verify with {summary['public_key']})"
                  + ("; that key was made now: keep it secret" if summary["made_key"] else ""))
    if summary["failed"]:
        sys.stderr.write(f"edgekit: error: {summary['failed']} class(es) failed: "
                         + "; ".join(f"{n}: {c['error']}" for n, c in summary["classes"].items() if c["error"]) + "\n")
        raise typer.Exit(1)


def _budgets(budgets: dict) -> str:
    """Each budget's verdict, and a predicted latency's bound: "latency_ms met (0.025 ms, up to 0.88)"."""
    words = []
    for name, v in budgets.items():
        verdict = v.get("verdict", "met" if v["met"] else "missed")
        bound = f" ({v['value']:.3g} ms, up to {v['high']:.3g})" if v.get("high") is not None else ""
        words.append(f"{name} {verdict}{bound}")
    return "; ".join(words) or "–"
