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
