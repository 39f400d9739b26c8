"""Data that cannot say anything is refused before calibration and measurement; weak data is reported."""

import json

import numpy as np
import pytest

from edgekit.data import from_arrays
from edgekit.errors import BadInput
from edgekit.models import InputSpec
from tests.conftest import run_cli

IMAGE = (InputSpec("x", (1, 1, 8, 8), "float32"),)
rng = np.random.default_rng(0)


def test_varied_data_has_no_warnings():
    assert from_arrays({"x": rng.random((30, 1, 8, 8), np.float32)}, IMAGE, "ok").warnings == ()


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((30, 1, 8, 8), np.float32), "nothing varies: 'x' is (nearly) the same in all 30 samples"),
    (np.full((30, 1, 8, 8), 255.0, np.float32), "nothing varies"),
    (100 + 1e-7 * rng.random((30, 1, 8, 8)), "nothing varies"),
    (np.repeat(rng.random((1, 1, 8, 8)), 30, axis=0), "all 30 samples are the same sample"),
    (np.full((30, 1, 8, 8), 1e39), "beyond float32's largest value"),
])
def test_data_that_cannot_say_anything_is_refused(array, message):
    with pytest.raises(BadInput, match="^data d: ") as caught:
        from_arrays({"x": array}, IMAGE, "d")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_integers_a_dtype_cannot_hold_are_refused():
    tokens = (InputSpec("ids", (1, 16), "int32"),)
    with pytest.raises(BadInput, match=r"outside int32's \[-2147483648, 2147483647\]"):
        from_arrays({"ids": rng.integers(0, 2**40, (20, 16))}, tokens, "d")
    pixels = (InputSpec("img", (1, 4), "uint8"),)
    with pytest.raises(BadInput, match="holds values in \\[-3, 250\\], outside uint8"):
        from_arrays({"img": np.concatenate([np.full((10, 4), -3), np.full((10, 4), 250)])}, pixels, "d")


def test_weak_data_is_a_warning():
    duplicated = np.repeat(rng.random((3, 1, 8, 8), np.float32), 10, axis=0)
    assert from_arrays({"x": duplicated}, IMAGE, "d").warnings == (
        "data d: only 3 of the 30 samples are distinct: calibration and accuracy rest on 3",)
    specs = (InputSpec("x", (1, 8), "float32"), InputSpec("mask", (1, 8), "int64"), InputSpec("scale", (1, 1), "float32"))
    mixed = from_arrays({"x": rng.random((30, 8), np.float32), "mask": np.ones((30, 8), np.int64),
                         "scale": np.full((30, 1), 0.5, np.float32)}, specs, "d")
    # a mask of ones is normal (no padding); a float input that never varies is worth a line
    assert mixed.warnings == ("data d: input 'scale' is 0.5 in every sample: its int8 range says nothing about real inputs",)
    assert mixed.subset(np.arange(5), "calibration").warnings == mixed.warnings


def test_deploy_prints_and_records_the_warnings(tmp_path):
    np.savez(tmp_path / "dup.npz", x=np.repeat(rng.random((4, 1, 8, 8), np.float32), 15, axis=0))
    result = run_cli("deploy", "--target", "host", "--precision", "int8", "--data", str(tmp_path / "dup.npz"),
                     "--out", str(tmp_path / "run"), "--repeats", "20", "--duration", "0.2")
    assert result.returncode == 0, result.stderr
    assert "warning: data " in result.stderr and "only 4 of the 60 samples are distinct" in result.stderr
    assert "warning: only 12 calibration sample(s)" in result.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["data"]["warnings"] == [f"data {tmp_path / 'dup.npz'}: only 4 of the 60 samples are distinct: "
                                          "calibration and accuracy rest on 4"]
