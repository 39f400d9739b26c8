import tempfile
from pathlib import Path

import pytest
import torch

from edgekit import zoo


@pytest.mark.slow
@pytest.mark.parametrize("factory", [zoo.resnet, zoo.mobilenet], ids=["resnet", "mobilenet"])
def test_zoo_model_is_trained_and_accurate(factory):
    model, example = factory()
    assert not model.training
    x, y = zoo.data()
    assert x.shape[1:] == (1, zoo.RESOLUTION, zoo.RESOLUTION) and x.dtype == "float32" and y.dtype == "int64"
    with torch.no_grad():
        assert model(example).shape == (1, 10)
        accuracy = (model(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert accuracy >= 0.95


def test_the_zoo_cnns_run_at_224_for_latency_work():
    from edgekit import graph
    from edgekit.models import load_model

    small, large = load_model("edgekit.zoo:mobilenet"), load_model("edgekit.zoo:mobilenet224")
    assert large.inputs[0].shape == (1, 1, 224, 224)
    x, y = zoo.data224(4)
    assert x.shape == (4, 1, 224, 224) and len(y) == 4
    assert large.module(torch.from_numpy(x)).shape == (4, 10)  # the same trained weights, fed 224x224
    macs = graph.totals(graph.layer_table(graph.export_onnx(large, Path(tempfile.mkdtemp()) / "m.onnx")))["macs"]
    small_macs = graph.totals(graph.layer_table(graph.export_onnx(small, Path(tempfile.mkdtemp()) / "m.onnx")))["macs"]
    assert macs > 40 * small_macs  # (224/32)^2 = 49x the work: what makes it a latency model
