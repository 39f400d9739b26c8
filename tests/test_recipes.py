"""Data recipes in calibration/: every shipped one loads and gives arrays edgekit's data layer accepts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.data import from_arrays
from edgekit.errors import BadInput
from edgekit.models import InputSpec, parse_input_shapes
from edgekit.recipes import load_recipe, recipe_arrays
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "calibration").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_each_shipped_recipe_gives_its_data(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    arrays = recipe_arrays(recipe)
    specs = tuple(InputSpec(name or "x", shape, dtype) for name, shape, dtype in parse_input_shapes(list(recipe.input_shape)))
    samples = from_arrays(arrays, specs, str(path))
    assert len(samples) == recipe.count and samples.labels is not None
    if recipe.model.startswith("zoo:"):
        assert Path(recipe.model_spec()).is_file()


def test_count_is_a_seeded_subset_in_order(tmp_path):
    np.savez(tmp_path / "numbers.npz", x=np.arange(40, dtype=np.float32)[:, None], y=np.arange(40) % 4)
    (tmp_path / "numbers.yaml").write_text("name: numbers\nmodel: net.onnx\nsource: numbers.npz\ncount: 10\nseed: 3\n")
    recipe = load_recipe(tmp_path / "numbers.yaml")
    assert Path(recipe.source) == (tmp_path / "numbers.npz").resolve()
    first, second = recipe_arrays(recipe), recipe_arrays(recipe)
    assert len(first["x"]) == 10 and np.array_equal(first["x"], second["x"])
    assert "y" not in first and np.array_equal(first["labels"], first["x"][:, 0].astype(int) % 4)
    assert np.all(np.diff(first["x"][:, 0]) > 0)


def test_factory_args_reach_the_factory(tmp_path):
    (tmp_path / "small.yaml").write_text("name: small\nmodel: edgekit.demo:build\nsource: edgekit.demo:data\n"
                                        "factory_args: {}\ncount: 5\n")
    assert len(recipe_arrays(load_recipe(tmp_path / "small.yaml"))["x"]) == 5
    (tmp_path / "wrong.yaml").write_text("name: wrong\nmodel: m.onnx\nsource: edgekit.demo:data\nfactory_args: {n: 3}\n")
    with pytest.raises(BadInput, match="factory_args do not fit edgekit.demo:data"):
        recipe_arrays(load_recipe(tmp_path / "wrong.yaml"))


@pytest.mark.parametrize("text, field", [
    ("name: x\nsource: edgekit.demo:data\n", "model"),
    ("name: x\nmodel: m.onnx\nsource: edgekit.demo:data\nsplit: [0.5, 0.5, 0.5]\n", "split"),
    ("name: x\nmodel: m.onnx\nsource: edgekit.demo:data\ncout: 10\n", "cout"),
    ("name: x\nmodel: m.onnx\nsource: edgekit.demo:data\ncount: two\n", "count"),
    ("name: x\nmodel: m.onnx\nsource: edgekit.demo:data\nmetric: 'not a metric!'\n", "metric"),
])
def test_a_malformed_recipe_names_the_file_and_the_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(BadInput) as err:
        load_recipe(path)
    message = str(err.value)
    assert "bad.yaml" in message and f"'{field}'" in message and "\n" not in message


def test_a_file_that_is_not_a_recipe(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(BadInput, match="list.yaml: expected a mapping"):
        load_recipe(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(BadInput, match="broken.yaml: not valid YAML"):
        load_recipe(tmp_path / "broken.yaml")


def test_calibrate_with_a_recipe_takes_its_model_data_metric_and_split(tmp_path):
    """`edgekit calibrate --recipe`: the recipe's model, data, metric and split, with nothing else given."""
    recipe = tmp_path / "digits.yaml"
    recipe.write_text("name: digits\nmodel: edgekit.demo:build\nsource: edgekit.demo:data\ncount: 200\n"
                      "split: [0.4, 0.3, 0.3]\nmetric: agreement\n")
    result = run_cli("calibrate", "-t", "host", "--recipe", str(recipe), "--method", "minmax", "--out", str(tmp_path / "run"),
                     "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["metric"]["name"] == "agreement"  # the recipe's, not the default top1 the labels would give
    assert report["data"]["source"].startswith("recipe digits")
    assert report["data"]["splits"] == {"calibration": 80, "validation": 60, "test": 60}
    assert report["calibration"]["int8_layers"] > 0


def test_a_recipe_and_data_together_is_one_line():
    result = run_cli("calibrate", "-t", "host", "--recipe", "calibration/demo.yaml", "--data", "x.npz")
    assert result.returncode == 2 and "leave out --data" in result.stderr
