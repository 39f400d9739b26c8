"""One way to judge a budget (edgekit/budget.py): met when the value is known and not above the budget."""

from __future__ import annotations

from edgekit.budget import BudgetVerdict, judge


def test_a_value_at_or_under_the_budget_meets_it():
    assert judge("latency_ms", 1.0, 1.0, "measured").met and judge("latency_ms", 1.0, 0.5, "predicted").met
    assert not judge("latency_ms", 1.0, 1.0001, "measured").met


def test_no_value_is_not_met_and_says_why():
    verdict = judge("max_accuracy_drop", 1.0, None, "measured", why="no accuracy")
    assert not verdict.met
    assert verdict.as_dict() == {"budget": 1.0, "value": None, "kind": "measured", "met": False, "why": "no accuracy"}


def test_the_dict_keeps_the_fleet_keys_and_leaves_the_name_to_its_caller():
    verdict = judge("memory_mb", 16, 3.5, "predicted")
    assert verdict == BudgetVerdict("memory_mb", 16, 3.5, "predicted")
    assert verdict.as_dict() == {"budget": 16, "value": 3.5, "kind": "predicted", "met": True}
