"""The `edgekit` command line: each command parses, calls one library function, prints.

One module per command group, its printing beside it; this one holds the app, the command tree and
the exit codes. Errors meant for users (`EdgekitError`) print one line on stderr and exit 2 (bad input)
or 1 (failure); anything else prints one line too, and the traceback only with --debug.

The commands import the library inside their bodies: `edgekit --help` loads neither it nor torch
nor a runtime (tests/test_layout.py checks).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from edgekit.cli import agent, bundle, deploy, devices, estimate, fleet, inspect, profile, targets
from edgekit.errors import EdgekitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find the fastest version of a model that meets its budget on a device, and ship it.")
for command in (deploy.deploy, deploy.search, deploy.calibrate, inspect.inspect, estimate.estimate, profile.profile):
    app.command()(command)
app.add_typer(targets.app, name="targets")
app.add_typer(fleet.app, name="fleet")
app.add_typer(bundle.app, name="bundle")
app.add_typer(devices.app, name="devices")
app.add_typer(agent.app, name="agent")
STATE = {"debug": False}


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    STATE["debug"] = debug


def main() -> None:
    try:
        app()
    except EdgekitError as error:
        if STATE["debug"]:
            raise
        sys.stderr.write(f"edgekit: error: {_one_line(str(error))}\n")
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("edgekit: interrupted\n")
        sys.exit(130)
    except Exception as error:  # a bug in edgekit or a runtime: still one line unless --debug
        if STATE["debug"]:
            raise
        sys.stderr.write(f"edgekit: internal error: {type(error).__name__}: {_one_line(str(error))} (rerun with --debug for the traceback)\n")
        sys.exit(1)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:600]
