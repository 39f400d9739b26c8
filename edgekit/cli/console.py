"""Where the commands print: results on stdout, progress and warnings on stderr."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console

from edgekit.errors import BUDGET_MISSED, BUDGET_UNCERTAIN

out = Console(soft_wrap=True)  # lines (paths, warnings) never wrapped mid-word; tables still fit the width
err = Console(stderr=True, soft_wrap=True)


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def exit_on_missed_budget(verdict: str) -> None:
    """A script or CI job must tell a missed budget, and one only a device can confirm, from success without
    reading the report (README: Errors). `verdict`: "met", "uncertain" or "missed" (edgekit.budget)."""
    if verdict == "missed":
        err.print(f"edgekit: the budget was missed (exit {BUDGET_MISSED})")
        raise typer.Exit(BUDGET_MISSED)
    if verdict == "uncertain":
        err.print(f"edgekit: the budget is uncertain: met by the prediction, not by its upper bound; measure it on the "
                  f"device (exit {BUDGET_UNCERTAIN})")
        raise typer.Exit(BUDGET_UNCERTAIN)
