"""Data recipes: small YAML files in `calibration/` that say where a model's evaluation data comes from.

A recipe names the model, the data source (a factory with keyword arguments, an .npz beside the recipe,
a folder), how many samples, the seed, the split, the metric and, for people, what preprocessing was
done. It is validated into a frozen object on load, so a typo is one line naming the file and the field,
before anything runs. `zoo:NAME` as a model resolves through `edgekit.ocr_zoo.model_path`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.data import (
    LABEL_KEYS,
    Samples,
    as_labels,
    as_numbers,
    demo_data,
    factory_arrays,
    from_arrays,
    load_data,
    read_npz,
    split,
)
from edgekit.errors import BadInput
from edgekit.models import DEMO_SPEC, InputSpec, parse_input_shapes
from edgekit.ocr_zoo import model_path
from edgekit.user_files import read_yaml
from edgekit.util import import_object

FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class Recipe(BaseModel):
    """One data set for one model, as its file says (a relative `source` or `model` path made absolute)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    model: str = Field(min_length=1)  # .onnx path, pkg.module:factory, or zoo:NAME
    source: str = Field(min_length=1)  # pkg.module:factory, an .npz/.npy file or a folder
    factory_args: dict[str, Any] = Field(default_factory=dict)
    count: int | None = Field(default=None, ge=3)  # samples to use; all when absent
    seed: int = 0
    split: tuple[float, float, float] = (0.2, 0.3, 0.5)  # calibration, validation, test
    preprocessing: str = ""
    metric: str | None = None  # a built-in name (top1, agreement, ...) or pkg.module:function
    input_shape: tuple[str, ...] = ()  # NAME:D1,D2,.. as --input-shape takes them

    @field_validator("split")
    @classmethod
    def _fractions(cls, split: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(split) <= 0 or abs(sum(split) - 1) > 1e-6:
            raise ValueError(f"three positive fractions (calibration, validation, test) summing to 1: {list(split)}")
        return split

    @field_validator("metric")
    @classmethod
    def _metric(cls, metric: str | None) -> str | None:
        if metric is None or FACTORY.match(metric) or re.fullmatch(r"[a-z][a-z0-9-]*", metric):
            return metric
        raise ValueError(f"a metric name (top1, psnr, ...) or package.module:function, not '{metric}'")

    @property
    def is_factory(self) -> bool:
        return bool(FACTORY.match(self.source))

    def model_spec(self) -> str:
        """The model as edgekit's `--model` takes it: `zoo:NAME` becomes the zoo's ONNX file."""
        if self.model.startswith("zoo:"):
            return str(model_path(self.model.removeprefix("zoo:")))
        return self.model


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe; relative data and model paths are taken from the recipe's folder."""
    path = Path(path)
    data = read_yaml(path, "recipe")
    if not isinstance(data, dict):
        raise BadInput(f"recipe {path}: expected a mapping of fields (name, model, source, ...)")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise BadInput(f"recipe {path}: field '{field}': {first['msg']}") from err
    paths = {k: v for k, v in (("source", recipe.source), ("model", recipe.model))
             if not (FACTORY.match(v) or v.startswith("zoo:") or Path(v).is_absolute())}
    return recipe.model_copy(update={k: str((path.parent / v).resolve()) for k, v in paths.items()})


def _call_factory(recipe: Recipe) -> dict:
    what = f"recipe {recipe.name}: source"
    factory = import_object(recipe.source, what)
    try:
        inspect.signature(factory).bind(**recipe.factory_args)
    except TypeError as err:
        raise BadInput(f"recipe {recipe.name}: factory_args do not fit {recipe.source} ({err})") from err
    except ValueError:  # no signature to check against: the call says
        pass
    return factory_arrays(factory, recipe.source, what, **recipe.factory_args)


def _read_source(recipe: Recipe) -> dict[str, np.ndarray]:
    if recipe.is_factory:
        return _call_factory(recipe)
    if recipe.factory_args:
        raise BadInput(f"recipe {recipe.name}: factory_args given but source {recipe.source} is not a factory")
    path = Path(recipe.source)
    if not path.exists():
        raise BadInput(f"recipe {recipe.name}: data not found: {recipe.source}")
    if path.suffix == ".npz":
        return read_npz(path)
    if not recipe.input_shape:
        raise BadInput(f"recipe {recipe.name}: source {recipe.source} needs input_shape (NAME:D1,D2,..)")

    shapes = parse_input_shapes(list(recipe.input_shape))
    samples = load_data(recipe.source, tuple(InputSpec(name or "x", shape, dtype) for name, shape, dtype in shapes))
    return {**samples.inputs, **({} if samples.labels is None else {"labels": samples.labels})}


def recipe_arrays(recipe: Recipe) -> dict[str, np.ndarray]:
    """The recipe's samples as `edgekit.data.from_arrays` takes them: inputs by name and "labels" (an
    .npz's `y` renamed); `count` of them drawn without replacement by the seed, in their original order."""
    where = f"recipe {recipe.name} ({recipe.source})"
    arrays = _read_source(recipe)
    labels = as_labels(next((arrays.pop(k) for k in LABEL_KEYS if k in arrays), None), where)
    arrays = {k: as_numbers(v, f"'{k}'", where) for k, v in arrays.items()}
    if any(v.ndim == 0 for v in arrays.values()):
        raise BadInput(f"recipe {recipe.name}: {recipe.source} gives a single value, not samples: "
                       f"{', '.join(k for k, v in arrays.items() if v.ndim == 0)}")
    if labels is not None:
        arrays["labels"] = labels
    counts = {len(v) for v in arrays.values()}
    if len(counts) != 1:
        raise BadInput(f"recipe {recipe.name}: {recipe.source} gives arrays of different lengths {sorted(counts)}")
    n = counts.pop()
    if recipe.count is None or recipe.count == n:
        return arrays
    if recipe.count > n:
        raise BadInput(f"recipe {recipe.name}: count {recipe.count} but {recipe.source} gives {n} samples")
    index = np.sort(np.random.default_rng(recipe.seed).choice(n, recipe.count, replace=False))
    return {k: v[index] for k, v in arrays.items()}


def with_recipe(request):
    """A deploy request (`edgekit.deploy.DeployRequest`) with the recipe's model, metric and input shapes
    where the request names none of its own; the request as it is without a recipe."""
    if request.recipe is None:
        return request
    if request.data:
        raise BadInput("--recipe says where the data comes from: leave out --data")
    recipe = load_recipe(request.recipe)
    return dataclasses.replace(request, model=request.model or recipe.model_spec(), metric=request.metric or recipe.metric,
                               input_shapes=request.input_shapes or tuple(recipe.input_shape))


def recipe_samples(path: Path, inputs):
    """The recipe's samples matched to the model's inputs (`edgekit.data.Samples`)."""
    recipe = load_recipe(path)
    return from_arrays(recipe_arrays(recipe), inputs, f"recipe {recipe.name} ({path})")


def recipe_split(path: Path | None, samples):
    """The seeded three-way split, in the recipe's fractions when there is a recipe."""
    return split(samples) if path is None else split(samples, tuple(load_recipe(path).split))


def model_samples(model, data: str | None, recipe: Path | None = None, *, missing: str | None = None) -> Samples | None:
    """The one place a model's data comes from: the recipe, else --data, else the demo's held-out digits
    for the demo model; else None, or the error `missing` where the step cannot go on without data."""
    if recipe is not None:
        return recipe_samples(recipe, model.inputs)
    if data:
        return load_data(data, model.inputs)
    if model.spec == DEMO_SPEC:
        return demo_data(model.inputs)
    if missing is not None:
        raise BadInput(missing)
    return None
