"""Bad input: one line on stderr, a non-zero exit (2 for the user's input), never a traceback."""

import onnx
import pytest
import yaml

from edgekit.targets import shipped_dir
from tests.conftest import run_cli


def _files(tmp_path, demo_onnx):
    (tmp_path / "random.onnx").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "truncated.onnx").write_bytes(demo_onnx.read_bytes()[: demo_onnx.stat().st_size // 2])
    proto = onnx.load(str(demo_onnx))
    proto.graph.initializer[0].float_data[:] = []
    array = onnx.numpy_helper.to_array(proto.graph.initializer[0]).copy()
    array.flat[0] = float("nan")
    proto.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(array, proto.graph.initializer[0].name))
    onnx.save(proto, str(tmp_path / "nan.onnx"))
    target = yaml.safe_load((shipped_dir() / "jetson-orin-nano.yaml").read_text())
    target["cores"] = "six"
    (tmp_path / "_jetson.yaml").write_text((shipped_dir() / "_jetson.yaml").read_text())
    (tmp_path / "wrong-type.yaml").write_text(yaml.safe_dump(target))
    (tmp_path / "raising.py").write_text("def build():\n    raise RuntimeError('weights not found')\n")
    import numpy as np

    np.savez(tmp_path / "wrong-shape.npz", x=np.zeros((10, 3, 32, 32), np.float32))
    np.savez(tmp_path / "zeros.npz", x=np.zeros((60, 1, 8, 8), np.float32))
    np.savez(tmp_path / "near-constant.npz", x=1 + 1e-9 * np.random.default_rng(0).random((60, 1, 8, 8)))
    np.savez(tmp_path / "one-repeated.npz", x=np.repeat(np.random.default_rng(0).random((1, 1, 8, 8)), 40, axis=0))
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.xml").write_text("<net><layers>")
    (tmp_path / "broken.bin").write_bytes(b"")
    (tmp_path / "bad-layer.xml").write_text('<?xml version="1.0"?><net name="x" version="11"><layers><layer id="0" type="Foo"/></layers></net>')
    (tmp_path / "bad-layer.bin").write_bytes(b"")


CASES = {
    "missing file": (["deploy", "-t", "host", "--model", "nowhere.onnx"], 2, "not found"),
    "random bytes as .onnx": (["deploy", "-t", "host", "--model", "{d}/random.onnx"], 2, "not a valid ONNX model"),
    "truncated .onnx": (["deploy", "-t", "host", "--model", "{d}/truncated.onnx"], 2, "not a valid ONNX model"),
    "unknown target": (["deploy", "-t", "pdp11"], 2, "unknown target 'pdp11'"),
    "yaml with a wrong type": (["targets", "show", "{d}/wrong-type.yaml"], 2, "field 'cores'"),
    "factory that raises": (["deploy", "-t", "host", "--model", "raising:build"], 2, "raised RuntimeError: weights not found"),
    "data of the wrong shape": (["deploy", "-t", "host", "--data", "{d}/wrong-shape.npz"], 2, "the model expects (1, 8, 8)"),
    "empty data folder": (["deploy", "-t", "host", "--data", "{d}/empty"], 2, "holds no .npy or image files"),
    "nan weights": (["deploy", "-t", "host", "--model", "{d}/nan.onnx"], 2, "NaN or Inf"),
    "negative budget": (["deploy", "-t", "host", "--latency-budget-ms", "-3"], 2, "must be positive"),
    "negative repeat count": (["deploy", "-t", "host", "--repeats", "-5"], 2, "--repeats must be positive"),
    "precision the target lacks": (["deploy", "-t", "host", "--precision", "fp16"], 2, "does not run fp16"),
    "bad --input-shape": (["inspect", "examples.encoder:build", "--input-shape", "1,x"], 2, "--input-shape"),
    "corrupt engine file": (["profile", "{d}/broken.xml", "-t", "host"], 2, "OpenVINO cannot load broken.xml: not a valid IR"),
    "engine file with a bad layer": (["profile", "{d}/bad-layer.xml", "-t", "host"], 2, "missing mandatory attribute"),
    "missing module": (["inspect", "no_such_pkg.models:build"], 2, "cannot import module"),
    "calibration data all zeros": (["deploy", "-t", "host", "--precision", "int8", "--data", "{d}/zeros.npz"], 2, "nothing varies"),
    "near-constant data": (["deploy", "-t", "host", "--data", "{d}/near-constant.npz"], 2, "nothing varies"),
    "one sample repeated": (["deploy", "-t", "host", "--data", "{d}/one-repeated.npz"], 2, "all 40 samples are the same sample"),
    "--out is a file": (["deploy", "-t", "host", "--out", "{d}/a-file"], 2, "is a file; name a folder"),
    "--out under a file": (["search", "-t", "host", "--speedup", "2", "--out", "{d}/a-file/run"], 2, "is a file; name a folder"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_clear_line(case, tmp_path, demo_onnx):
    _files(tmp_path, demo_onnx)
    args, code, message = CASES[case]
    result = run_cli(*(a.format(d=tmp_path) for a in args), cwd=tmp_path)
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edgekit: error:") and message in lines[0], lines[0]


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("--debug", "deploy", "-t", "pdp11", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr
