"""Shared fixtures. The cache (demo weights, measured host peaks) lives in one temporary folder per
test session, so tests never touch the user's cache and CI starts from nothing, as a user does."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.cli_process import run_edgekit

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """PyTorch's threads split between xdist's workers (OMP_NUM_THREADS, unless already set), read by the
    workers, the CLI's fork servers and every process they start. Two workers on two cores, each with
    two OpenMP threads, wait on each other's busy core: an FPGA deploy took twice as long as with one.
    Latency is not timed by PyTorch: the runtimes' threads are edgekit's own (the target's cores)."""
    workers = getattr(config.option, "numprocesses", None)
    if isinstance(workers, int) and workers > 1 and not os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """One fresh cache per run, shared by pytest-xdist's workers (the demo is trained and the host's peaks
    measured once, not once per worker); every cache write is atomic, so workers may race on it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # set in xdist's workers; absent with -p no:xdist
    run_root = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    cache = run_root / "edgekit-cache"
    cache.mkdir(exist_ok=True)
    os.environ["EDGEKIT_CACHE_DIR"] = str(cache)
    os.environ.pop("EDGEKIT_TARGETS_PATH", None)
    yield


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `edgekit ARGS` as a user would, in a fresh process (tests/cli_process.py: forked from one that has
    imported torch and the runtimes, or a new interpreter where the environment asks for one)."""
    return run_edgekit(list(args), cwd=cwd, env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="session")
def demo_model():
    from edgekit.models import load_model

    return load_model(None)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One real `edgekit deploy --target host --json` of the demo, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("demo-run")
    result = run_cli("deploy", "--target", "host", "--out", str(out), "--json", "--duration", "0.2")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


@pytest.fixture(scope="session")
def demo_onnx(tmp_path_factory, demo_model):
    from edgekit import graph

    return graph.export_onnx(demo_model, tmp_path_factory.mktemp("onnx") / "demo.onnx")


# Seconds each of the longest files took in one process (2-core AMD EPYC, 2026-12-04): only the order below.
LONGEST = {"test_search.py": 180, "test_hls4ml.py": 150, "test_fleet.py": 85, "test_transformers.py": 70,
           "test_metrics.py": 67, "test_calibrate.py": 65, "test_devices.py": 60, "test_zoo.py": 60,
           "test_structure_moves.py": 55, "test_tensorrt.py": 45, "test_foreign_onnx.py": 41, "test_agent.py": 40,
           "test_qat.py": 28, "test_deploy.py": 27, "test_sensitivity.py": 23, "test_tflite.py": 23}


def pytest_collection_modifyitems(config, items):
    """The longest files first, in their usual order within: xdist (`--dist loadfile`) hands files to its
    workers in collection order, so the long ones start at once and the short ones fill in around them (a
    long file handed out last would run alone while the other worker idles)."""
    items.sort(key=lambda item: -LONGEST.get(item.path.name, 0))  # stable: the order within each file is kept


@pytest.fixture(scope="session")
def demo_onnx_file(tmp_path_factory):
    """The digits demo exported to ONNX once: a model given as a file (no search, no PyTorch)."""
    from edgekit import graph
    from edgekit.models import load_model

    return graph.export_onnx(load_model(None), tmp_path_factory.mktemp("onnx") / "demo.onnx")
