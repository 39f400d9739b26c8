"""Per-layer int8 sensitivity (`edgekit inspect --sensitivity`) and `--precision mixed`: what
sensitivity.json records, that each verdict follows from its numbers, and that mixed never ships an
engine slower than fp32. Behaviour only: no test depends on how fast this machine is."""

from __future__ import annotations

import json
import statistics

import onnx
import pytest

from edgekit.calibrate import qdq
from edgekit.calibrate.run import CalibrationOptions
from edgekit.data import demo_data, split
from edgekit.errors import BadInput
from edgekit.plan import PrecisionPlan
from edgekit.precision import sensitivity
from edgekit.profile import ProfileSettings
from edgekit.targets import load_target
from edgekit.util import sha256_file
from tests.conftest import run_cli

FAST = ("--duration", "0.2", "--method", "mse")


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """One `edgekit deploy --target host --precision mixed` of the demo, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("mixed")
    result = run_cli("deploy", "-t", "host", "--precision", "mixed", "--out", str(out), "--json", "--repeats", "20", *FAST)
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def _layers(path) -> list[str]:
    return list(qdq.quantizable_layers(onnx.load(str(path))))


def _expected_verdict(record: dict, saved: dict) -> str:
    """The rule of sensitivity.py, restated from the recorded numbers and thresholds."""
    if record["accuracy"] is None:
        return "float"
    t, a, lat = saved["thresholds"], record["accuracy"], record["latency"]
    errors = [r["accuracy"]["output_error"] for r in saved["layers"].values() if r["accuracy"]]
    median = statistics.median(errors)
    bound = max(t["top1_loss_pt"], 100 / saved["accuracy"]["samples"])
    lost = a["top1_loss_pt"] if a["top1_loss_pt"] is not None else \
        None if a["agreement"] is None else (1 - a["agreement"]) * 100
    e = a["output_error"]
    if (lost is not None and lost > bound) or e > t["error_ceiling"] or (e > t["error_floor"] and e > t["error_outlier"] * median):
        return "harmful"
    if lat.get("gain_ms") is None:
        return "int8"
    if lat["kind"] == "predicted":
        return "slower" if lat["gain_ms"] < 0 else "int8"
    noise = max(lat["noise_ms"], t["noise_fraction"] * lat["fp32_ms"], t["noise_floor_ms"])
    return "slower" if lat["gain_ms"] < -noise else "int8"


def test_sensitivity_json_records_every_layer_measured_on_host(mixed_run):
    out, report = mixed_run
    assert report["artifacts"]["sensitivity"] == "sensitivity.json"
    saved = json.loads((out / "sensitivity.json").read_text())
    assert list(saved["layers"]) == _layers(out / "model.onnx")
    assert saved["target"]["name"] == "host" and saved["backend"] == "openvino" and "openvino" in saved["versions"]
    assert saved["model"]["sha256"] == sha256_file(out / "model.onnx")
    assert saved["calibration"]["method"] == "mse"
    assert saved["splits"] == report["data"]["splits"]
    assert saved["accuracy"]["split"] == "validation" and saved["accuracy"]["samples"] == saved["splits"]["validation"]
    assert "onnxruntime" in saved["accuracy"]["evaluated_with"]
    lat = saved["latency"]
    assert lat["kind"] == "measured" and lat["fp32"]["kind"] == lat["int8"]["kind"] == "measured"
    for name, record in saved["layers"].items():
        assert record["verdict"] in sensitivity.VERDICTS and record["reason"]
        assert record["latency"]["kind"] == "measured"
        if record["verdict"] != "float":
            assert 0 <= record["accuracy"]["output_error"] < 1 and record["accuracy"]["top1_loss_pt"] is not None
            assert record["latency"]["fp32_ms"] > 0 and record["latency"]["int8_ms"] > 0, name
            assert record["latency"]["fp32_runtime"] and record["latency"]["int8_runtime"], name


def test_verdicts_follow_from_the_recorded_numbers(mixed_run):
    out, _ = mixed_run
    saved = json.loads((out / "sensitivity.json").read_text())
    for name, record in saved["layers"].items():
        assert record["verdict"] == _expected_verdict(record, saved), (name, record)
    assert saved["summary"] == {v: sum(r["verdict"] == v for r in saved["layers"].values()) for v in sensitivity.VERDICTS}


def test_load_sensitivity_round_trips(mixed_run, tmp_path, demo_onnx):
    out, _ = mixed_run
    path = out / "sensitivity.json"
    loaded = sensitivity.load_sensitivity(path, onnx_path=out / "model.onnx")
    assert loaded == json.loads(path.read_text())
    plan = sensitivity.mixed_plan(loaded)
    assert {n for n, p in plan.layers.items() if p == "int8"} == {n for n, r in loaded["layers"].items() if r["verdict"] == "int8"}
    (tmp_path / "other.onnx").write_bytes(demo_onnx.read_bytes() + b" ")
    with pytest.raises(BadInput, match="another model"):
        sensitivity.load_sensitivity(path, onnx_path=tmp_path / "other.onnx")
    (tmp_path / "bad.json").write_text('{"version": 1, "layers": {"conv": {"verdict": "maybe"}}}')
    with pytest.raises(BadInput, match="no valid verdict"):
        sensitivity.load_sensitivity(tmp_path / "bad.json")
    with pytest.raises(BadInput, match="cannot read"):
        sensitivity.load_sensitivity(tmp_path / "missing.json")


def test_mixed_deploy_ships_the_int8_verdicts_and_is_never_slower_than_fp32(mixed_run):
    out, report = mixed_run
    saved = json.loads((out / "sensitivity.json").read_text())
    precision, choice = report["precision"], report["precision"]["mixed"]
    assert precision["asked"] == "mixed" and choice["kind"] == "measured" and choice["reason"]
    int8 = {n for n, p in precision["planned"].items() if p == "int8"}
    if choice["chosen"] == "mixed":
        assert int8 == {n for n, r in saved["layers"].items() if r["verdict"] == "int8"}
        assert choice["mixed_p50_ms"] < choice["fp32_p50_ms"]
        assert json.loads((out / "scales.json").read_text())["planned"] == precision["planned"]
    else:
        assert choice["chosen"] == "fp32" and not int8 and "fp32" in choice["reason"]
    # the recorded latency is the chosen engine's, from the same side-by-side measurement
    assert report["latency_ms"]["kind"] == "measured"
    assert report["latency_ms"]["p50"] <= choice["fp32_p50_ms"]
    assert precision["mismatches"] == {}
    assert report["accuracy"]["agreement"] >= 0.98


def test_a_target_not_here_gets_predicted_gains_only(tmp_path, demo_model, demo_onnx):
    splits = split(demo_data(demo_model.inputs))
    how = sensitivity.HowToAnalyse(options=CalibrationOptions("mse"), settings=ProfileSettings(min_time_s=0.1, repeats=5))
    saved = sensitivity.analyse(demo_onnx, splits, load_target("intel-cpu"), tmp_path, how=how)
    assert saved["latency"]["kind"] == "predicted" and "roofline" in saved["latency"]["source"]  # intel-cpu: no anchors
    assert all(r["latency"]["kind"] == "predicted" for r in saved["layers"].values())
    assert '"measured"' not in (tmp_path / "sensitivity.json").read_text()
    for record in saved["layers"].values():
        assert record["verdict"] == _expected_verdict(record, saved)


def test_verdict_rules_and_the_mixed_plan():
    acc = {"top1_loss_pt": 0.0, "agreement": 1.0, "output_error": 1e-5, "top1": 1.0}
    lat = {"kind": "measured", "fp32_ms": 0.1, "int8_ms": 0.05, "gain_ms": 0.05, "noise_ms": 0.002}
    verdict = sensitivity._verdict
    assert verdict(acc, lat, 400, 1e-5)[0] == "int8"
    assert verdict({**acc, "top1_loss_pt": 0.75}, lat, 400, 1e-5)[0] == "harmful"  # 3 samples of 400
    assert verdict({**acc, "top1_loss_pt": 0.75}, lat, 100, 1e-5)[0] == "int8"  # under one sample of 100
    assert verdict({**acc, "top1_loss_pt": None, "agreement": 0.98}, lat, 400, 1e-5)[0] == "harmful"
    assert verdict({**acc, "output_error": 0.02}, lat, 400, 1e-5)[0] == "harmful"
    assert verdict({**acc, "output_error": 2e-3}, lat, 400, 1e-4)[0] == "harmful"  # 20x the median
    assert verdict({**acc, "output_error": 5e-4}, lat, 400, 1e-5)[0] == "int8"  # an outlier, but benign
    assert verdict(acc, {**lat, "int8_ms": 0.2, "gain_ms": -0.1}, 400, 1e-5)[0] == "slower"
    assert verdict(acc, {**lat, "int8_ms": 0.103, "gain_ms": -0.003}, 400, 1e-5)[0] == "int8"  # within 5 %
    assert verdict(acc, {"kind": "predicted", "fp32_ms": 1.0, "int8_ms": 1.5, "gain_ms": -0.5}, 400, 1e-5)[0] == "slower"
    saved = {"float_precision": "fp32", "layers": {"a": {"verdict": "int8"}, "b": {"verdict": "harmful"},
                                                   "c": {"verdict": "slower"}, "d": {"verdict": "float"}}}
    assert sensitivity.mixed_plan(saved) == PrecisionPlan("fp32", {"a": "int8", "b": "fp32", "c": "fp32", "d": "fp32"})


def test_inspect_sensitivity_prints_each_layer_and_where_it_wrote(tmp_path):
    result = run_cli("inspect", "--sensitivity", "--target", "host", "--out", str(tmp_path), *FAST)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "sensitivity.json").read_text())
    for name, record in saved["layers"].items():
        assert name in result.stdout and record["verdict"] in result.stdout
    assert "sensitivity.json" in result.stdout and "measured" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["inspect", "{onnx}", "--sensitivity", "-t", "host"], "--sensitivity needs data"),
    (["deploy", "-t", "jetson-nano", "--precision", "mixed"], "jetson-nano does not run int8"),
    (["deploy", "-t", "host", "--precision", "mixed", "--plan", "plan.yaml"], "leave out --plan"),
])
def test_sensitivity_and_mixed_refuse_bad_input_in_one_line(args, message, tmp_path, demo_onnx):
    result = run_cli(*(a.format(onnx=demo_onnx) for a in args), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error:") and message in lines[0], result.stderr
