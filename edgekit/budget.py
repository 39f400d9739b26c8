"""One way to judge a budget: a value (latency, memory, stored size, accuracy drop) against its limit.

deploy's report, the search's search.json and a fleet's budgets all judge with `judge`: a budget is met
when its value is known and not above it; the verdict keeps the value, how it was obtained (`kind`:
"measured", "predicted", ...) and, where there is no value, why.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetVerdict:
    name: str  # what is budgeted: "latency_ms", "memory_mb", "flash_mb", "max_accuracy_drop"
    budget: float
    value: float | None  # None: not obtained (see why); a budget without a value is not met
    kind: str | None  # how the value was obtained: "measured", "predicted", "measured (xz)", ...
    why: str | None = None  # why there is no value, or anything else the reader needs to trust the verdict

    @property
    def met(self) -> bool:
        return self.value is not None and self.value <= self.budget

    def as_dict(self) -> dict:
        """{"budget", "value", "kind", "met"} and "why" where there is one (the name is the caller's key)."""
        out = {"budget": self.budget, "value": self.value, "kind": self.kind, "met": self.met}
        return out if self.why is None else {**out, "why": self.why}


def judge(name: str, budget: float, value: float | None, kind: str | None, why: str | None = None) -> BudgetVerdict:
    """`value` (obtained as `kind` says) against `budget`: met when known and not above it."""
    return BudgetVerdict(name, budget, value, kind, why)
