import numpy as np
import pytest
import torch

from edgekit.data import from_arrays, load_data, split
from edgekit.errors import BadInput
from edgekit.models import InputSpec, load_model


def test_demo_is_trained_deterministic_and_accurate(demo_model):
    from edgekit import demo

    x, y = demo.held_out()
    with torch.no_grad():
        accuracy = (demo_model.module(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert accuracy > 0.95
    again = load_model(None)  # from the cache, same weights
    for (_, a), (_, b) in zip(demo_model.module.state_dict().items(), again.module.state_dict().items(), strict=True):
        assert torch.equal(a, b)


def test_factory_with_two_integer_inputs():
    model = load_model("examples.encoder:build")
    assert [(s.name, s.dtype) for s in model.inputs] == [("input_ids", "int64"), ("attention_mask", "int64")]
    assert model.name == "encoder"


def test_torchscript_needs_and_takes_input_shape(tmp_path, demo_model):
    path = tmp_path / "m.pt"
    torch.jit.trace(demo_model.module, torch.zeros(1, 1, 8, 8)).save(str(path))
    with pytest.raises(BadInput, match="--input-shape"):
        load_model(str(path))
    loaded = load_model(str(path), ["1,1,8,8"])
    assert loaded.inputs[0].shape == (1, 1, 8, 8)


def test_exported_program_file(tmp_path, demo_model):
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(demo_model.module, (torch.zeros(1, 1, 8, 8),)), str(path))
    loaded = load_model(str(path))
    assert loaded.kind == "torch" and loaded.inputs[0].shape == (1, 1, 8, 8)


def test_onnx_file(demo_onnx):
    loaded = load_model(str(demo_onnx))
    assert loaded.kind == "onnx" and loaded.inputs == (InputSpec("input", (1, 1, 8, 8), "float32"),)


def test_nan_weights_refused(tmp_path, demo_model):
    import copy

    broken = copy.deepcopy(demo_model.module)
    with torch.no_grad():
        broken[0].weight[0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt2"
    torch.export.save(torch.export.export(broken, (torch.zeros(1, 1, 8, 8),)), str(path))
    with pytest.raises(BadInput, match="NaN or Inf"):
        load_model(str(path))


SPEC = (InputSpec("x", (1, 1, 8, 8), "float32"),)


def test_npz_npy_folder_and_image_folder(tmp_path):
    from PIL import Image

    x = np.random.default_rng(0).random((12, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(12) % 3)
    samples = load_data(str(tmp_path / "d.npz"), SPEC)
    assert len(samples) == 12 and samples.labels is not None
    folder = tmp_path / "npy"
    folder.mkdir()
    for i in range(5):
        np.save(folder / f"{i:03d}.npy", x[i])
    assert len(load_data(str(folder), SPEC)) == 5
    images = tmp_path / "images"
    for label in ("cat", "dog"):
        (images / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((np.random.default_rng(i).random((20, 20)) * 255).astype(np.uint8)).save(images / label / f"{i}.png")
    samples = load_data(str(images), SPEC)
    assert samples.inputs["x"].shape == (6, 1, 8, 8) and list(samples.labels) == [0, 0, 0, 1, 1, 1]


def test_factory_data_for_two_integer_inputs():
    model = load_model("examples.encoder:build")
    samples = load_data("examples.encoder:data", model.inputs)
    assert samples.inputs["input_ids"].dtype == np.int64 and len(samples) == 400


def test_splits_are_disjoint_deterministic_and_cover_everything():
    x = np.arange(100, dtype=np.float32).reshape(100, 1, 1, 1)
    samples = from_arrays({"x": x}, (InputSpec("x", (1, 1, 1, 1), "float32"),), "t")
    a, b = split(samples), split(samples)
    parts = [set(getattr(a, k).inputs["x"].ravel()) for k in ("calibration", "validation", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert sum(map(len, parts)) == 100
    assert np.array_equal(a.test.inputs["x"], b.test.inputs["x"])


def test_wrong_shape_and_empty_folder(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 32, 32), np.float32))
    with pytest.raises(BadInput, match=r"shape \(3, 32, 32\), the model expects \(1, 8, 8\)"):
        load_data(str(tmp_path / "d.npz"), SPEC)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="holds no .npy or image files"):
        load_data(str(tmp_path / "empty"), SPEC)


def test_integer_input_with_fractional_data_refused(tmp_path):
    np.savez(tmp_path / "d.npz", ids=np.full((3, 4), 0.5))
    with pytest.raises(BadInput, match="non-integer"):
        load_data(str(tmp_path / "d.npz"), (InputSpec("ids", (1, 4), "int64"),))
