"""Task metrics (`--metric`): the built-ins, the default chosen from the data, a user's function end to end,
and that the metric is what decides the sensitivity verdicts and accuracy-aware int8 (on the encoder,
whose output is not judged by labels)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.errors import BadInput
from edgekit.metrics import choose_metric, load_metric
from tests.conftest import run_cli

ENCODER = ("--model", "examples.encoder:build", "--data", "examples.encoder:data")
FAST = ("--duration", "0.2", "--repeats", "20", "--method", "minmax")


def test_built_in_metrics_on_known_outputs():
    ref = [np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])]
    ours = [np.array([[0.2, 0.8], [0.4, 0.6], [0.1, 0.9]])]
    labels = np.array([1, 0, 0])
    assert load_metric("top1")(ours, labels, ref) == pytest.approx(1 / 3)
    assert load_metric("agreement")(ours, labels, ref) == pytest.approx(2 / 3)
    assert load_metric("cosine")(ref, None, ref) == pytest.approx(1.0)
    assert load_metric("rel-mse")(ref, None, ref) == pytest.approx(1.0)
    assert load_metric("rel-mse")(ours, None, ref) < 1.0
    assert load_metric("psnr")(ref, None, ref) == 100.0  # identical outputs: the cap
    assert 0 < load_metric("psnr")(ours, None, ref) < 100
    assert load_metric("agreement").drop(1.0, 0.99) == pytest.approx(1.0)  # points
    with pytest.raises(BadInput, match="needs labels"):
        load_metric("top1")(ours, None, ref)


def test_the_default_comes_from_the_data_and_says_why():
    logits = [np.zeros((1, 10))]
    assert choose_metric(None, np.arange(5), logits).name == "top1"
    assert choose_metric(None, None, logits).name == "agreement"
    assert choose_metric(None, None, [np.zeros((1, 1, 32, 32))]).name == "rel-mse"
    assert choose_metric(None, None, [np.zeros((1, 384))]).name == "agreement"  # a vector: classes or not, agreement
    assert choose_metric(None, None, [np.zeros((1, 16, 64))]).name == "cosine"
    softmax = np.full((1, 40, 100), 0.01)
    assert choose_metric(None, None, [softmax]).name == "agreement"  # a sequence of distributions (OCR)
    masks = np.zeros((5, 32, 32))  # labels that are not one class per sample (masks) do not make top1
    assert choose_metric(None, masks, [np.zeros((1, 1, 32, 32))]).name == "rel-mse"
    assert "default" in choose_metric(None, None, logits).why
    assert choose_metric("cosine", np.arange(5), logits).why == ""


@pytest.mark.parametrize(("spec", "message"), [
    ("nonsense", "unknown metric 'nonsense'"),
    ("tests.user_metrics:missing", "has no 'missing'"),
    ("no_such_package.x:f", "cannot import module"),
])
def test_a_bad_metric_spec_is_a_bad_input(spec, message):
    with pytest.raises(BadInput, match=message):
        load_metric(spec)


@pytest.mark.parametrize(("name", "message"), [("raises", "raised ValueError: this metric is broken"),
                                               ("nan", "returned nan")])
def test_a_metric_that_raises_or_returns_nan_is_one_line_and_exit_2(name, message):
    result = run_cli("deploy", "-t", "host", "--metric", f"tests.user_metrics:{name}", "--duration", "0.1", "--repeats", "5")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_a_user_metric_end_to_end_is_named_and_measured_for_both_models(tmp_path):
    result = run_cli("deploy", "-t", "host", "--precision", "int8", "--metric", "tests.user_metrics:margin_agreement",
                     "--out", str(tmp_path), "--json", *FAST)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["metric"]["name"] == "tests.user_metrics:margin_agreement"
    assert report["metric"]["unit"].startswith("agreement where the source is sure")
    judged = report["accuracy"]["metric"]
    assert judged["source"] == 1.0 and 0.9 <= judged["value"] <= 1.0
    assert judged["drop"] == pytest.approx((judged["source"] - judged["value"]) * 100, abs=1e-6)
    scales = json.loads((tmp_path / "scales.json").read_text())
    assert scales["selection"] is None or scales["selection"]["metric"] == "tests.user_metrics:margin_agreement" \
        or scales["method"] == "minmax"


def test_cosine_drives_the_sensitivity_verdicts_on_the_encoder(tmp_path):
    result = run_cli("inspect", "examples.encoder:build", "--sensitivity", "--data", "examples.encoder:data", "--metric", "cosine", "--out", str(tmp_path), "--json",
                     "--duration", "0.2", "--method", "minmax")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "sensitivity.json").read_text())
    assert saved["accuracy"]["metric"]["name"] == "cosine" and saved["accuracy"]["metric"]["decides"] == "harm"
    judged = [r for r in saved["layers"].values() if r["accuracy"]]
    assert judged and all("metric_drop" in r["accuracy"] for r in judged)
    for record in judged:  # harm follows from the cosine drop alone (0.5 points), never from top-1
        assert (record["verdict"] == "harmful") == (record["accuracy"]["metric_drop"] > 0.5)


def test_accuracy_aware_int8_on_the_encoder_walks_and_ships_the_fastest_point_within_the_drop(tmp_path):
    result = run_cli("deploy", "-t", "host", *ENCODER, "--precision", "int8", "--metric", "cosine",
                     "--max-accuracy-drop", "0", "--out", str(tmp_path), "--json", *FAST)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    aware = report["precision"]["accuracy_aware"]
    path = aware["path"]
    assert len(path) >= 3  # D = 0: the walk returns layers to float until cosine matches the source's
    assert [p["int8_layers"] for p in path] == sorted((p["int8_layers"] for p in path), reverse=True)
    assert all(p["p50_ms"] > 0 and p["float_p50_ms"] > 0 for p in path)
    within = [p for p in path if p["drop"] <= 0 and p["ratio"] < 1]
    if within:
        best = min(within, key=lambda p: p["ratio"])
        assert aware["shipped"] == best["step"]
        assert sum(p == "int8" for p in report["precision"]["planned"].values()) == best["int8_layers"]
    else:  # no plan within the drop is faster than float: float ships
        assert aware["shipped"] is None and report["precision"]["label"].startswith("fp32")
    assert (tmp_path / "accuracy-aware").is_dir()


def test_max_accuracy_drop_needs_an_int8_precision():
    result = run_cli("deploy", "-t", "host", "--max-accuracy-drop", "1", "--duration", "0.1")
    assert result.returncode == 2 and "--precision int8" in result.stderr
