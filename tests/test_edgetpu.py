"""Coral Edge TPU: the full-int8 .tflite (int8 I/O) from edgekit's calibration, its op coverage predicted
from the Edge TPU's documented limits, and the compile step left pending where edgetpu_compiler is not
installed (it is not here: it is x86-Linux only and not on PyPI). The accuracy check runs the same int8
model on LiteRT's CPU kernels; no TPU is needed for any of it."""

import json
import os
import shutil
import stat

import numpy as np
import pytest

from tests.conftest import run_cli

# edgetpu_compiler -s prints this layout (the header, the memory lines, the per-operator table); the
# figures below are this test's own.
COMPILER_LOG = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 97 ms.

Input model: model_int8.tflite
Input size: 69.76KiB
Output model: model_int8_edgetpu.tflite
Output size: 118.02KiB
On-chip memory used for caching model parameters: 70.50KiB
On-chip memory remaining for caching model parameters: 7.92MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 8
Operation log: model_int8_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will instead run on the CPU, which is slower. If possible, consider updating your model to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 7
Number of operations that will run on CPU: 1

Operator                       Count      Status

RESHAPE                        1          Mapped to Edge TPU
DEPTHWISE_CONV_2D              1          Mapped to Edge TPU
CONV_2D                        3          Mapped to Edge TPU
MAX_POOL_2D                    1          Mapped to Edge TPU
MEAN                           1          Mapped to Edge TPU
FULLY_CONNECTED                1          Operation is otherwise supported, but not mapped due to some unspecified limitation
"""


@pytest.fixture(scope="module")
def tpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tpu")
    result = run_cli("deploy", "--target", "tpu", "--method", "mse", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def _target(**options):
    from edgekit.targets import load_target

    target = load_target("coral-edgetpu")
    return target.model_copy(update={"backend": target.backend.model_copy(
        update={"options": {**target.backend.options, **options}})})


@pytest.mark.skipif(shutil.which("edgetpu_compiler") is not None, reason="edgetpu_compiler is installed: nothing pending")
def test_tpu_deploy_writes_int8_model_and_coverage_and_says_the_compile_is_pending(tpu_run):
    out, report = tpu_run
    command = f"edgetpu_compiler -s -o {out} {out / 'model_int8.tflite'}"
    assert report["build"]["pending"] == command and command in report["status"]
    assert report["precision"]["label"] == "int8" and report["latency_ms"]["kind"] == "predicted"
    assert report["accuracy"]["agreement"] >= 0.99 and "CPU kernels" in report["accuracy"]["where"]

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(out / "model_int8.tflite"))
    interpreter.allocate_tensors()
    assert interpreter.get_input_details()[0]["dtype"] == np.int8 and interpreter.get_output_details()[0]["dtype"] == np.int8
    assert {t for op in interpreter._get_ops_details() for t in op["operand_types"]} <= {np.int8, np.int32}

    coverage = json.loads((out / "edgetpu_coverage.json").read_text())
    assert coverage["mapped"] == coverage["total"] == 8 and coverage["first_cpu_op"] is None
    assert [o["op"] for o in coverage["ops"]][:2] == ["RESHAPE", "DEPTHWISE_CONV_2D"]
    assert any("8 of 8 ops on the TPU" in line for line in report["build"]["summary"])


def test_the_first_unsupported_op_sends_the_rest_to_the_cpu(tpu_run):
    """The compiler maps one prefix: a table without MEAN leaves MEAN and the FULLY_CONNECTED after it
    (which the TPU does support) on the CPU."""
    from edgekit.backends.edgetpu import coverage

    out, _ = tpu_run
    table = {op: note for op, note in _target().backend.options["tflite_ops"].items() if op != "MEAN"}
    result = coverage((out / "model_int8.tflite").read_bytes(), _target(tflite_ops=table))
    runs_on = [(o["op"], o["runs_on"]) for o in result["ops"]]
    assert runs_on[-2:] == [("MEAN", "cpu"), ("FULLY_CONNECTED", "cpu")] and result["mapped"] == 6
    assert "not in the Edge TPU's supported-operations table" in result["ops"][-2]["why"]
    assert result["ops"][-1]["why"].startswith("after op 6 (MEAN)")


def test_a_float_model_falls_back_from_its_first_op(tpu_run):
    from edgekit.backends.edgetpu import coverage
    from edgekit.backends.tflite_int8 import float_io

    out, _ = tpu_run
    result = coverage(float_io((out / "model_int8.tflite").read_bytes()), _target())
    assert result["first_cpu_op"]["index"] == 0 and "float32" in result["first_cpu_op"]["why"] and result["mapped"] == 0


def test_compiler_log_parsing_with_a_standin_script_for_edgetpu_compiler(tpu_run, demo_model, tmp_path, monkeypatch):
    """The compiler branch. edgetpu_compiler cannot be installed here, so a script stands in for it ONLY to
    test that edgekit runs it as documented and parses its log: it prints the log above and copies the
    model to *_edgetpu.tflite; nothing it returns is checked as if a TPU had compiled it."""
    from edgekit.backends.base import BuildContext, get_backend
    from edgekit.data import demo_data, split
    from edgekit.plan import PrecisionPlan

    out, report = tpu_run
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "edgetpu_compiler"
    (tmp_path / "log.txt").write_text(COMPILER_LOG)
    fake.write_text(f'#!/bin/sh\n[ "$1" = -s ] && [ "$2" = -o ] || exit 3\ncat "{tmp_path / "log.txt"}"\n'
                    'cp "$4" "$3/$(basename "$4" .tflite)_edgetpu.tflite"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    context = BuildContext(model=demo_model, float_onnx=out / "model.onnx",
                           calibration=split(demo_data(demo_model.inputs)).calibration, scales=out / "scales.json")
    backend = get_backend("edgetpu")
    artifact = backend.build(onnx_path=out / "model.int8.onnx", plan=PrecisionPlan("int8", report["precision"]["planned"]),
                             target=_target(), out_dir=build_dir, context=context)
    assert artifact.pending is None and artifact.path.name == "model_int8_edgetpu.tflite"
    compiler = artifact.notes["compiler"]
    assert compiler["version"] == "16.0.384591198" and compiler["mapped"] == 7 and compiler["not_mapped"] == 1
    assert compiler["on_chip_memory"] == "70.50KiB" and compiler["rows"][-1]["op"] == "FULLY_CONNECTED"
    assert (build_dir / "model_int8_edgetpu.log.txt").read_text() == COMPILER_LOG
    engine = backend.load(artifact, target=_target(), threads=1)  # the check runs the int8 model on CPU kernels
    assert engine.path.name == "model_int8.tflite"


def test_float_plans_are_refused(demo_model, tmp_path):
    from edgekit.backends.base import get_backend
    from edgekit.errors import BadInput
    from edgekit.plan import PrecisionPlan

    with pytest.raises(BadInput, match="the Edge TPU runs int8 only"):
        get_backend("edgetpu").build(onnx_path=tmp_path / "x.onnx", plan=PrecisionPlan("int8", {"node_linear": "fp32"}),
                                     target=_target(), out_dir=tmp_path)
