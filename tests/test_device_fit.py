"""Predicted latency off the device, the rest of issue 15: no prediction goes below the runtime's published
per-inference floor, and a whole model measured on a device joins its target's fit, kept per device."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli

from edgekit import anchored, device_latencies
from edgekit.cost import CostModel
from edgekit.graph import Layer
from edgekit.latency_table import LatencyTable
from edgekit.targets import load_target


@pytest.mark.parametrize("target", ["rpi5", "jetson-orin-nano", "coral-edgetpu"])
def test_the_demo_is_never_predicted_below_its_runtime_s_floor(target):
    """TensorRT's floor (a stream sync plus a kernel launch per compute layer, NVIDIA's CUDA Graphs blog) decides
    the demo's prediction on the Orin Nano; LiteRT on a Pi and the Edge TPU have no published floor, and say why."""
    result = run_cli("estimate", "--target", target, "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    lat, floor = found["latency"], found["floor"]
    if target != "jetson-orin-nano":
        assert set(floor) == {"reason"} and "No published lower bound" in floor["reason"]
        return
    assert floor["ms"] == pytest.approx(0.0058 + 0.0009 * floor["compute_layers"]) and floor["compute_layers"] == 5
    assert min(lat["p50"], lat["low"], lat["high"]) >= floor["ms"] and floor["decided"]
    assert lat["p50"] == pytest.approx(floor["ms"]) and lat["high"] > lat["p50"]
    assert "CUDA Graphs" in floor["source"] and floor["url"] == "https://developer.nvidia.com/blog/cuda-graphs/"
    assert "to the runtime's per-inference floor" in lat["source"]


def test_estimate_and_targets_show_print_the_floor_and_its_source():
    shown = run_cli("estimate", "--target", "jetson-orin-nano", env={"COLUMNS": "300"})
    assert shown.returncode == 0, shown.stderr
    assert "decided the prediction" in shown.stdout and "developer.nvidia.com/blog/cuda-graphs" in shown.stdout
    pi = run_cli("targets", "show", "rpi5", env={"COLUMNS": "300"})
    assert pi.returncode == 0 and "latency floor" in pi.stdout and "No published lower bound" in pi.stdout
    nano = run_cli("targets", "show", "jetson-nano", env={"COLUMNS": "300"})
    assert "0.0058 ms per inference + 0.0009 ms per compute layer" in nano.stdout and "CUDA Graphs" in nano.stdout


def _layers() -> list[Layer]:
    conv = Layer("conv", "Conv", ((1, 3, 32, 32),), (1, 16, 32, 32), 16 * 27 * 1024, 448, 4 * (3072 + 16384 + 448))
    fc = Layer("fc", "Gemm", ((1, 16),), (1, 10), 160, 170, 4 * (16 + 10 + 170))
    return [conv, fc]


def test_the_search_s_cost_model_off_the_device_keeps_the_floor_too():
    orin = load_target("jetson-orin-nano")
    model = CostModel(orin, table=LatencyTable(orin))
    latency = model.predict(_layers(), default="int8")
    assert latency.p50 >= 0.0058 + 2 * 0.0009 and latency.low >= 0.0058 + 2 * 0.0009


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_a_device_measurement_joins_its_target_s_fit_and_persists_per_device(cache):
    """Measured 0.25 ms on an Orin Nano (published anchors and floor say 0.01): the prediction moves to it and
    says so; the bound is the leave-one-out error over anchors and measurements (one measurement checks little,
    two of the same model agree); the file is the device's, in the cache."""
    orin, layers = load_target("jetson-orin-nano"), _layers()
    before = anchored.predict(layers, orin, "int8")
    feats = anchored.features(layers, orin, "int8")
    path = device_latencies.record("orin-lab", orin, model="two-layer", precision="int8", features=feats, ms=0.25)
    assert path == cache / "device-latencies" / "orin-lab.json"
    stored = json.loads(path.read_text())
    assert stored["target"] == "jetson-orin-nano" and stored["measurements"][0]["ms"] == 0.25
    once = anchored.predict(layers, orin, "int8")
    assert abs(math.log(once.p50 / 0.25)) < abs(math.log(before.p50 / 0.25)) / 10
    assert "3 published latencies of jetson-orin-nano and 1 device measurements (device orin-lab)" in once.source
    device_latencies.record("orin-lab", orin, model="two-layer", precision="int8", features=feats, ms=0.27)
    twice = anchored.predict(layers, orin, "int8")
    assert len(json.loads(path.read_text())["measurements"]) == 2 and "2 device measurements" in twice.source
    assert twice.low <= 0.25 and twice.high >= 0.27 and twice.high / twice.p50 < once.high / once.p50
    fit = anchored.fit_for(orin)
    assert len(fit.loo_errors) == 5 and fit.params["overhead_ms"] > 0.2
    assert "device measurements" not in anchored.predict(layers, load_target("jetson-nano"), "int8").source  # its own only


def test_a_corrupt_device_file_is_skipped_with_one_line_and_moved_aside_by_the_next_measurement(cache):
    folder = cache / "device-latencies"
    folder.mkdir()
    (folder / "orin-lab.json").write_text("{not json")
    result = run_cli("estimate", "--target", "jetson-orin-nano", "--json", env={"EDGEKIT_CACHE_DIR": str(cache)})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "orin-lab.json" in line]
    assert len(lines) == 1 and "skipped" in lines[0]
    assert "device measurements" not in json.loads(result.stdout)["latency"]["source"]
    orin = load_target("jetson-orin-nano")
    device_latencies.record("orin-lab", orin, model="m", precision="int8",
                            features=anchored.features(_layers(), orin, "int8"), ms=0.3)
    assert (folder / "orin-lab.json.corrupt").read_text() == "{not json"
    assert len(device_latencies.for_target(orin)) == 1
