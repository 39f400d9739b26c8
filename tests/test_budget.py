"""One way to judge a budget (edgekit/budget.py): met when the value is known and not above the budget."""

from __future__ import annotations

from edgekit.budget import BudgetVerdict, judge, judge_latency


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


def test_a_prediction_meets_a_budget_only_if_its_upper_bound_does():
    assert judge("latency_ms", 1.0, 0.5, "predicted", high=0.9).verdict == "met"
    uncertain = judge("latency_ms", 1.0, 0.5, "predicted", high=1.5)
    assert uncertain.verdict == "uncertain" and not uncertain.met and uncertain.uncertain
    assert uncertain.as_dict() == {"budget": 1.0, "value": 0.5, "kind": "predicted", "met": False,
                                   "verdict": "uncertain", "high": 1.5}
    assert judge("latency_ms", 1.0, 1.2, "predicted", high=2.0).verdict == "missed"


def test_a_prediction_without_a_bound_is_a_floor_that_can_rule_a_budget_out_never_in():
    assert judge("latency_ms", 1.0, 0.01, "predicted", unbounded=True).verdict == "uncertain"
    assert judge("latency_ms", 1.0, 3.0, "predicted", unbounded=True).verdict == "missed"
    assert judge_latency("latency_ms", 1.0, {"kind": "predicted", "p50": 0.5}).verdict == "uncertain"
    assert judge_latency("latency_ms", 1.0, {"kind": "measured", "p50": 0.5}).verdict == "met"
    assert judge_latency("latency_ms", 1.0, {"kind": "predicted", "p50": 0.5, "low": 0.3, "high": 0.8}).met
    assert judge_latency("latency_ms", 1.0, None).verdict == "missed"
