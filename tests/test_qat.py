"""Quantization-aware fine-tuning (edgekit/compress/qat.py) against a post-training int8 loss the test
provokes: a digits MLP whose first layer has two outlier channels (256× larger, the next layer reading them
256× smaller: the same float function), so per-tensor int8 of the next layer's input has few levels left
for the other 62 channels. Both int8 models are edgekit's own Q/DQ export, run in ONNX Runtime."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from edgekit import graph
from edgekit.calibrate.run import CalibrationOptions, calibrate
from edgekit.compress.qat import QatTraining, Quantizers, qat
from edgekit.data import Samples
from edgekit.errors import BadInput
from edgekit.models import InputSpec, LoadedModel
from edgekit.plan import PrecisionPlan
from edgekit.targets import load_target
from tests import qat_models
from tests.qat_models import _digits

OPTIONS = CalibrationOptions(method="minmax", equalization="off")  # equalization would undo the outliers itself


@pytest.fixture(scope="module")
def digits():
    """Inputs, labels, the 1200 samples tests/qat_models.py trains on, and the rest (the test split)."""
    x, y = _digits()
    return x, y, np.arange(1200), np.arange(1200, len(x))


@pytest.fixture(scope="module")
def outlier_mlp():
    return qat_models.outlier_mlp()[0]


def _int8_accuracy(module, digits, folder) -> tuple[float, float]:
    """(fp32, int8) test accuracy of edgekit's export and Q/DQ calibration of `module`, in ONNX Runtime."""
    import onnxruntime as ort

    x, y, train, test = digits
    loaded = LoadedModel("test:mlp", "torch", (InputSpec("x", (1, 64), "float32"),), {"x": x[:1]}, "0" * 64,
                         module=module)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = graph.export_onnx(loaded, folder / "model.onnx")
    result = calibrate(onnx_path, Samples({"x": x[train[:300]]}, None, "test"), load_target("host"), PrecisionPlan("int8"),
                       folder, OPTIONS)
    accuracies = []
    for path in (onnx_path, result.qdq_path):
        session = ort.InferenceSession(str(path))
        predicted = np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in test]).argmax(1)
        accuracies.append(float(np.mean(predicted == y[test])))
    return accuracies[0], accuracies[1]


def test_qat_recovers_at_least_half_of_a_provoked_ptq_loss(outlier_mlp, digits, tmp_path):
    fp32, ptq = _int8_accuracy(outlier_mlp, digits, tmp_path / "ptq")
    assert fp32 - ptq >= 0.01, (fp32, ptq)  # the outliers cost post-training int8 at least a point
    student = copy.deepcopy(outlier_mlp)
    x, _, train, _ = digits
    report = qat(student, outlier_mlp, {"x": x[train[:300]]},
                 Quantizers(method=OPTIONS.method, weight_bits=load_target("host").quantization.weight_bits),
                 QatTraining(seconds=300))
    # bounded by its epochs (a few seconds), not by the clock: the same weights whatever the machine's load
    assert report.distill.stopped_by == "epochs" and report.layers == 3 and report.weight_bits in (7, 8)
    assert not any("parametrizations" in name for name, _ in student.named_parameters())  # a plain model again
    _, recovered = _int8_accuracy(student, digits, tmp_path / "qat")
    assert recovered - ptq >= 0.5 * (fp32 - ptq), {"fp32": fp32, "ptq": ptq, "qat": recovered}
    assert outlier_mlp[0].weight.abs().max() > 10  # the teacher is untouched


def test_qat_refuses_what_it_cannot_do(outlier_mlp, digits):
    x = digits[0][:32]
    with pytest.raises(BadInput, match="weight_bits"):
        qat(copy.deepcopy(outlier_mlp), outlier_mlp, {"x": x}, Quantizers(weight_bits=4))
    with pytest.raises(BadInput, match="not Conv/Linear"):
        qat(copy.deepcopy(outlier_mlp), outlier_mlp, {"x": x}, Quantizers(layers=("1",)))


@pytest.mark.slow
def test_the_search_falls_back_to_qat_when_a_standin_all_int8_plan_falls_below_the_floor(tmp_path, monkeypatch):
    """The outlier MLP, unpruned (a budget it meets as it is), with every layer int8. The sensitivity analysis would keep the outlier layer float
    (int8 costs it accuracy), so the plan is forced to all-int8 here: it stands in for a budget that only
    int8 everywhere meets. With no accuracy drop allowed, post-training int8 falls below the floor."""
    from edgekit.precision import sensitivity
    from edgekit.profile import ProfileSettings
    from edgekit.search.loop import SearchRequest, search

    monkeypatch.setattr(sensitivity, "mixed_plan", lambda analysis: PrecisionPlan("int8"))
    result = search(SearchRequest(target="host", model="tests.qat_models:outlier_mlp", data="tests.qat_models:digits_data",
                                  latency_budget_ms=1e3, max_accuracy_drop=0.0, out=tmp_path, step_finetune_s=0.5,
                                  final_finetune_s=10, time_limit_s=180, calibration=OPTIONS,
                                  settings=ProfileSettings(repeats=30, min_time_s=0.2, warmup_s=0.05)))
    record = result.qat
    assert record["tried"] and record["ptq_validation"] < record["floor"], record
    assert record["qat_validation"] is not None and record["weight_bits"] in (7, 8) and record["method"] == "minmax"
    shipped = Path(result.chosen.run_dir)
    assert (shipped.name == "qat") == record["kept"] and (shipped / "model.int8.onnx").exists()
    if record["kept"]:
        assert record["qat_validation"] > record["ptq_validation"]
    report = json.loads((shipped / "report.json").read_text())
    assert report["status"].startswith("complete") and report["qat"] == record
