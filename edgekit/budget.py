"""One way to judge a budget: a value (latency, memory, stored size, accuracy drop) against its limit.

deploy's report, the search's search.json and a fleet's budgets all judge with `judge`. The verdict is one of
three: **met** when the value is known and not above the budget, and, for a prediction with a bound, when its
upper bound is not above it either; **uncertain** when a prediction meets the budget but its upper bound does
not (the budget may well be met on the device: only a measurement can tell), or when a prediction has no bound
at all (a bare roofline is a floor, so it can rule a budget out, never in); **missed** otherwise. The verdict
keeps the value, how it was obtained (`kind`: "measured", "predicted", ...), the bound and, where there is no
value, why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Verdict = Literal["met", "uncertain", "missed"]


@dataclass(frozen=True)
class BudgetVerdict:
    name: str  # what is budgeted: "latency_ms", "memory_mb", "flash_mb", "max_accuracy_drop"
    budget: float
    value: float | None  # None: not obtained (see why); a budget without a value is not met
    kind: str | None  # how the value was obtained: "measured", "predicted", "measured (xz)", ...
    why: str | None = None  # why there is no value, or anything else the reader needs to trust the verdict
    high: float | None = None  # a prediction's upper bound (edgekit.anchored), where it has one
    unbounded: bool = False  # a prediction with no bound (a floor): it can miss a budget, never meet it

    @property
    def verdict(self) -> Verdict:
        if self.value is None or self.value > self.budget:
            return "missed"
        if self.unbounded or (self.high is not None and self.high > self.budget):
            return "uncertain"
        return "met"

    @property
    def met(self) -> bool:
        return self.verdict == "met"

    @property
    def uncertain(self) -> bool:
        return self.verdict == "uncertain"

    def as_dict(self) -> dict:
        """{"budget", "value", "kind", "met"}, "verdict" and "high" where the verdict rests on a bound, and
        "why" where there is one (the name is the caller's key)."""
        out = {"budget": self.budget, "value": self.value, "kind": self.kind, "met": self.met}
        if self.high is not None or self.unbounded:
            out |= {"verdict": self.verdict, "high": self.high}
        return out if self.why is None else {**out, "why": self.why}


def judge(name: str, budget: float, value: float | None, kind: str | None, why: str | None = None, *,
          high: float | None = None, unbounded: bool = False) -> BudgetVerdict:
    """`value` (obtained as `kind` says) against `budget`: met when known and not above it, and a prediction's
    upper bound `high` not above it either (else uncertain); `unbounded`, a prediction without a bound, is at
    best uncertain."""
    return BudgetVerdict(name, budget, value, kind, why, high, unbounded)


def judge_latency(name: str, budget: float, latency: dict | None, why: str | None = None) -> BudgetVerdict:
    """A latency (`Latency.as_dict()`: p50, kind and, for a prediction, low/high) against its budget."""
    if not latency:
        return judge(name, budget, None, None, why)
    predicted = latency.get("kind") == "predicted"
    return judge(name, budget, latency.get("p50"), latency.get("kind"), why, high=latency.get("high"),
                 unbounded=predicted and latency.get("high") is None)
