"""`edgekit estimate` and budgets judged on predictions (issue 15): a prediction meets a latency budget only when
its upper bound does, else the verdict is `uncertain` (exit 4), in estimate, deploy, search and fleet alike."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import run_cli

from edgekit import anchored
from edgekit.budget import judge_latency
from edgekit.errors import BUDGET_UNCERTAIN
from edgekit.estimate import estimate
from edgekit.fleet import build as fleet_build
from edgekit.fleet.manifest import DeviceClass
from edgekit.targets import load_target


@pytest.fixture(scope="module")
def orin():
    return estimate("jetson-orin-nano")


def test_estimate_json_gives_the_prediction_its_bound_and_an_uncertain_budget_exits_4(orin):
    """The demo on an Orin Nano: anchored, bounded, the roofline beside it; a budget between the prediction and
    its upper bound is uncertain (exit 4), above the bound met, below the prediction missed."""
    p50, high = orin.latency["p50"], orin.latency["high"]
    middle = math.sqrt(p50 * high)
    result = run_cli("estimate", "--target", "jetson-orin-nano", "--latency-budget-ms", f"{middle:.6g}", "--json")
    assert result.returncode == BUDGET_UNCERTAIN, result.stderr
    found = json.loads(result.stdout)
    lat = found["latency"]
    assert found["target"] == "jetson-orin-nano" and found["precision"] == "int8" and lat["kind"] == "predicted"
    assert lat["low"] <= lat["p50"] < lat["high"] and lat["p50"] > found["roofline_ms"] > 0  # low: the floor (issue 15)
    assert lat["p50"] == pytest.approx(p50) and found["budget"]["verdict"] == "uncertain" and "uncertain" in result.stderr
    assert len(found["fit"]["anchors"]) >= 3 and found["fit"]["free_parameters"] <= 2
    assert found["outside_decades"] > 1  # the digits demo is far smaller than any published anchor
    factor = anchored.fit_for(load_target("jetson-orin-nano")).interval_factor
    assert lat["high"] / lat["p50"] == pytest.approx(factor * anchored.GROWTH_PER_DECADE ** found["outside_decades"])
    assert judge_latency("latency_ms", high * 1.01, orin.latency).verdict == "met"
    assert judge_latency("latency_ms", p50 * 0.5, orin.latency).verdict == "missed"


def test_a_target_without_anchors_is_a_floor_with_no_bound_and_never_certifies_a_budget():
    found = estimate("intel-npu", latency_budget_ms=1000.0)
    assert found.fit is None and "high" not in found.latency and found.latency["p50"] == pytest.approx(found.roofline_ms)
    assert found.budget.verdict == "uncertain"


def test_estimate_refuses_bad_input_in_one_line():
    for args, words in ((("--target", "no-such-board"), "no-such-board"), (("--target", "coral-edgetpu", "--precision", "fp32"), "fp32"),
                        (("--target", "rpi4", "--latency-budget-ms", "-1"), "positive")):
        result = run_cli("estimate", *args)
        assert result.returncode == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_deploy_judges_a_latency_budget_on_the_prediction_s_upper_bound(tmp_path, demo_onnx_file):
    """On a Jetson (not here) the latency is predicted: a budget between the prediction and its bound is uncertain."""
    found = estimate("jetson-orin-nano", str(demo_onnx_file), "fp16")
    budget = math.sqrt(found.latency["p50"] * found.latency["high"])
    result = run_cli("deploy", "--target", "jetson-orin-nano", "--model", str(demo_onnx_file), "--precision", "fp16",
                     "--latency-budget-ms", f"{budget:.6g}", "--out", str(tmp_path / "run"), "--json")
    assert result.returncode == BUDGET_UNCERTAIN, result.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["latency_ms"]["kind"] == "predicted" and report["latency_ms"]["p50"] <= budget < report["latency_ms"]["high"]
    assert report["budget"]["verdict"] == "uncertain" and not report["budget"]["met"]


def test_a_fleet_class_ships_an_uncertain_latency_budget_and_fails_only_a_missed_one(tmp_path):
    klass = DeviceClass(target="rpi4", version="1", budgets={"latency_ms": 2.0})
    predicted = {"kind": "predicted", "p50": 1.0, "low": 0.5, "high": 3.0}
    record = {"report": {"latency_ms": predicted}}
    verdicts = fleet_build.judge(klass, Path(tmp_path), record)
    assert verdicts["latency_ms"]["verdict"] == "uncertain" and verdicts["latency_ms"]["high"] == 3.0
    assert fleet_build.missed_budgets({"latency_ms": verdicts["latency_ms"]}) == []
    record["report"]["latency_ms"] = {**predicted, "p50": 2.5}
    latency = fleet_build.judge(klass, Path(tmp_path), record)["latency_ms"]
    assert fleet_build.missed_budgets({"latency_ms": latency}) == ["latency_ms 2.5 > 2.0"]
