"""`edgekit deploy` end to end, as a user runs it."""

import json
import subprocess
import sys

import numpy as np

from tests.conftest import run_cli


def test_demo_on_host_reports_measured_latency_and_accuracy(demo_run):
    out, printed = demo_run
    report = json.loads((out / "report.json").read_text())
    assert printed["latency_ms"] == report["latency_ms"]
    assert report["target"]["name"] == "host" and report["backend"] == "openvino"
    lat = report["latency_ms"]
    assert lat["kind"] == "measured" and 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert report["predicted_latency_ms"]["kind"] == "predicted"
    assert report["accuracy"]["test"] > 0.95 and report["accuracy"]["agreement"] > 0.99
    assert report["data"]["splits"]["test"] > 100
    assert {"openvino", "onnxruntime", "torch"} <= set(report["versions"])
    assert report["layers"] and all(layer["exec_type"] for layer in report["layers"])
    for name in ("onnx", "engine", "layers", "target"):
        assert (out / report["artifacts"][name]).is_file()
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_the_ir_runs_in_plain_openvino_outside_edgekit(demo_run):
    out, _ = demo_run
    code = (
        "import sys, numpy as np, openvino as ov\n"
        "assert 'edgekit' not in sys.modules and 'torch' not in sys.modules\n"
        f"c = ov.Core().compile_model(r'{out / 'model.xml'}', 'CPU')\n"
        "print(c({0: np.zeros((1, 1, 8, 8), np.float32)})[c.outputs[0]].shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 10)"


def test_encoder_with_two_integer_inputs_on_onnxruntime(tmp_path):
    result = run_cli("deploy", "--target", "host", "--backend", "onnxruntime", "--model", "examples.encoder:build",
                     "--data", "examples.encoder:data", "--out", str(tmp_path), "--json", "--duration", "0")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == "onnxruntime" and report["latency_ms"]["kind"] == "measured"
    assert report["model"]["inputs"] == ["input_ids: int64[1, 32]", "attention_mask: int64[1, 32]"]
    assert report["accuracy"]["agreement"] == 1.0 and report["accuracy"]["test"] is None  # no labels given


def test_jetson_is_built_up_to_the_engine_and_the_device_finishes_it(tmp_path):
    result = run_cli("deploy", "--target", "jetson", "--method", "mse", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "on the device" in result.stdout and "trtexec" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["latency_ms"]["kind"] == "predicted" and "build the engine on the device" in report["status"]
    assert report["build"]["pending"].startswith("trtexec --onnx=model.trt.onnx --saveEngine=model.engine")
    assert all((tmp_path / name).is_file() for name in ("model.onnx", "model.trt.onnx", "tensorrt/trtexec.sh"))
    assert "ONNX Runtime" in report["accuracy"]["where"] and report["accuracy"]["agreement"] == 1.0


def test_target_not_here_gets_an_engine_and_a_predicted_latency(tmp_path):
    result = run_cli("deploy", "--target", "intel-igpu", "--precision", "fp16", "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["latency_ms"]["kind"] == "predicted" and "GPU" in report["status"]
    assert (tmp_path / "model.xml").is_file()


def test_budget_is_judged_on_the_measurement(tmp_path, demo_onnx):
    result = run_cli("deploy", "--target", "host", "--model", str(demo_onnx), "--latency-budget-ms", "1000",
                     "--out", str(tmp_path), "--json", "--duration", "0")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["budget"] == {"latency_ms": 1000.0, "met": True, "verdict": "met", "judged_on": "measured"}
    assert report["accuracy"] is None  # an ONNX model with no --data: latency only


def test_profile_an_engine_file_with_data(tmp_path, demo_run):
    from edgekit import demo

    out, _ = demo_run
    x, y = demo.held_out()
    np.savez(tmp_path / "digits.npz", x=x[:50], y=y[:50])
    result = run_cli("profile", str(out / "model.xml"), "--target", "host", "--data", str(tmp_path / "digits.npz"),
                     "--json", "--duration", "0")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["latency_ms"]["kind"] == "measured" and report["accuracy"]["test"] > 0.9
