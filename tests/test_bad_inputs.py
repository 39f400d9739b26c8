"""Bad input: one line on stderr, a non-zero exit (2 for the user's input), never a traceback."""

import re

import numpy as np
import onnx
import pytest
import yaml

from edgekit.data import from_arrays, load_data
from edgekit.errors import BadInput
from edgekit.models import InputSpec
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
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "devices-5.yaml").write_text("devices: 5\n")
    (tmp_path / "bad-url.yaml").write_text("devices: [{name: a, target: host, url: 'http://[::1', token_file: t}]\n")
    (tmp_path / "classes-list.yaml").write_text("fleet: f\nclasses: [a, b]\n")
    (tmp_path / "maybe.yaml").write_text((shipped_dir() / "host.yaml").read_text().replace("detect: true", "detect: maybe"))
    (tmp_path / "token").write_text("a-token-long-enough-for-the-agent\n")
    _bundle(tmp_path / "files-5.tar", {"files": 5})
    (tmp_path / "folder.tar.sig").mkdir()
    _bundle(tmp_path / "folder.tar", {"files": {}})
    (tmp_path / "pair.key.pub").mkdir()
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "helpers.py").write_text("import numpy as np\n\ndef ragged():\n    return [np.zeros((1, 8, 8)), np.zeros((2, 8, 8))]\n")


def _bundle(path, manifest: dict) -> None:
    """A tar holding only manifest.json, as a bundle would."""
    import io
    import json
    import tarfile

    data = json.dumps(manifest).encode()
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


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
    "target file not UTF-8": (["targets", "show", "{d}/binary.yaml"], 2, "binary.yaml: not UTF-8 text"),
    "inventory not UTF-8": (["devices", "list", "--devices", "{d}/binary.yaml"], 2, "binary.yaml: not UTF-8 text"),
    "fleet manifest not UTF-8": (["fleet", "build", "{d}/binary.yaml"], 2, "binary.yaml: not UTF-8 text"),
    "inventory devices not a list": (["devices", "list", "--devices", "{d}/devices-5.yaml"], 2, "devices: Input should be"),
    "device url that does not parse": (["devices", "list", "--devices", "{d}/bad-url.yaml"], 2, "is not a valid URL"),
    "fleet classes not a mapping": (["fleet", "build", "{d}/classes-list.yaml"], 2, "classes: Input should be a valid dictionary"),
    "target detect not a boolean": (["targets", "show", "{d}/maybe.yaml"], 2, "field 'detect': true or false, not 'maybe'"),
    "bundle manifest files not a mapping": (["bundle", "sign", "{d}/files-5.tar", "--key", "k"], 2, "'files' must map each file"),
    "signature path is a folder": (["bundle", "sign", "{d}/folder.tar", "--key", "{d}/token"], 2, "folder.tar.sig is a folder"),
    "key under a file": (["bundle", "keygen", "{d}/a-file/k.key"], 2, "a-file is a file, not a folder"),
    "key that is a folder": (["bundle", "keygen", "--force", "{d}/empty"], 2, "is a folder; name a file"),
    "public key path is a folder": (["bundle", "keygen", "{d}/pair.key"], 2, "pair.key.pub is a folder"),
    "token under a file": (["agent", "token", "{d}/a-file/tok"], 2, "a-file is a file, not a folder"),
    "agent workdir is a file": (["agent", "serve", "--token-file", "{d}/token", "--workdir", "{d}/a-file"], 2, "is a file; name a folder"),
    "agent upload limit nan": (["agent", "serve", "--token-file", "{d}/token", "--max-upload-mb", "nan"], 2, "--max-upload-mb must be"),
    "agent upload limit inf": (["agent", "serve", "--token-file", "{d}/token", "--max-upload-mb", "inf"], 2, "--max-upload-mb must be"),
    "agent port out of range": (["agent", "serve", "--token-file", "{d}/token", "--port", "70000"], 2, "--port must be 1 to 65535"),
    "agent negative keep-files": (["agent", "serve", "--token-file", "{d}/token", "--keep-files", "-1"], 2, "--keep-files must be"),
    "fleet cache is a file": (["fleet", "build", "{d}/classes-list.yaml", "--cache", "{d}/a-file"], 2, "--cache"),
    "empty .npz": (["deploy", "-t", "host", "--data", "{d}/empty.npz"], 2, "not a readable .npz archive (the file is empty)"),
    "ragged factory data": (["deploy", "-t", "host", "--data", "helpers:ragged"], 2, "is not a regular array"),
    "module spec without a module": (["inspect", ":build"], 2, "expected package.module:name"),
    "relative module spec": (["inspect", ".demo:build"], 2, "expected package.module:name"),
    "built-in as a factory": (["inspect", "os:getcwd"], 2, "is a built-in function"),
    "absurd --input-shape": (["inspect", "x.pt", "--input-shape", "x:1,99999999999"], 2, "more than edgekit takes"),
    "profile duration nan": (["profile", "{d}/broken.xml", "--duration", "nan"], 2, "--duration is seconds"),
    "search finetune negative": (["search", "-t", "host", "--speedup", "2", "--finetune", "-1"], 2, "--finetune is seconds"),
    "search resume of a folder with no search": (["search", "-t", "host", "--speedup", "2", "--resume", "{d}/empty"], 2, "holds no search"),
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


# ---- the same root causes, called as a library (no process per case) -----------------------------------

def _loaders():
    from edgekit.deploy import load_plan
    from edgekit.devices import load_inventory
    from edgekit.fleet.manifest import load_fleet
    from edgekit.recipes import load_recipe
    from edgekit.targets import load_target

    return {"target file": lambda p: load_target(str(p)), "device inventory": load_inventory,
            "fleet manifest": load_fleet, "plan file": load_plan, "recipe": load_recipe}


@pytest.mark.parametrize("what", ["target file", "device inventory", "fleet manifest", "plan file", "recipe"])
def test_every_yaml_loader_says_a_binary_file_is_not_text(tmp_path, what):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(BadInput, match=f"{what} .*binary.yaml: not UTF-8 text") as err:
        _loaders()[what](path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("what", ["device inventory", "fleet manifest", "plan file", "recipe"])
def test_every_yaml_loader_says_a_folder_is_not_a_file(tmp_path, what):
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(BadInput, match="folder.yaml"):
        _loaders()[what](tmp_path / "folder.yaml")


def test_output_folders_and_files_that_cannot_be_written(tmp_path, monkeypatch):
    import os

    from edgekit.user_files import check_folder, check_new_file

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(locked) else real_access(p, mode))
    with pytest.raises(BadInput, match=r"--out .*run: cannot write in .*locked \(permission denied\)"):
        check_folder(locked / "run", "--out")
    with pytest.raises(BadInput, match=r"cannot write key .*k.key \(permission denied\)"):
        check_new_file(locked / "k.key", "key")
    assert check_folder(tmp_path / "new" / "run", "--out") == tmp_path / "new" / "run"


def test_keygen_leaves_no_half_pair_behind(tmp_path):
    from edgekit.fleet.bundle import keygen

    (tmp_path / "pair.key.pub").mkdir()
    with pytest.raises(BadInput, match="pair.key.pub is a folder"):
        keygen(tmp_path / "pair.key")
    assert not (tmp_path / "pair.key").exists()


@pytest.mark.parametrize("files", [5, None, ["a.txt"], {"a.txt": "deadbeef"}])
def test_a_bundle_manifest_whose_files_are_the_wrong_shape(tmp_path, files):
    from edgekit.fleet.bundle import check_contents

    _bundle(tmp_path / "b.tar", {"files": files})
    with pytest.raises(BadInput, match="manifest.json"):
        check_contents(tmp_path / "b.tar")


SPEC = (InputSpec("x", (1, 1, 8, 8), "float32"),)
X = np.random.default_rng(0).random((30, 1, 8, 8), dtype=np.float32)


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x": np.full((30, 1, 8, 8), "a")}, "input 'x' holds text"),
    ({"x": X.astype(np.complex64)}, "holds complex numbers"),
    ({"x": [np.zeros((1, 8, 8)), np.zeros((2, 8, 8))]}, "is not a regular array"),
    ({"x": X, "y": np.int64(3)}, "labels is a single value"),
    ({"x": X, "y": np.array(["cat"] * 30)}, "labels holds text"),
    ({"x": X, "y": np.full(30, np.nan)}, "labels hold NaN"),
    ({"x": X, "y": np.arange(29)}, "29 labels for 30 samples"),
])
def test_arrays_that_are_not_numbers_or_labels_that_are_not_one_per_sample(arrays, message):
    with pytest.raises(BadInput, match=message):
        from_arrays(arrays, SPEC, "test data")


def test_a_factory_that_gives_no_labels_gives_samples_without_labels():
    assert from_arrays({"x": X, "labels": None}, SPEC, "factory").labels is None


def _write(path, content) -> None:
    """bytes as they are, an array as .npy (pickles allowed: a bad file on purpose), "image" as a PNG,
    None as a folder."""
    from PIL import Image

    if content is None:
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, np.ndarray):
        np.save(path, content, allow_pickle=True)
    else:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


@pytest.mark.parametrize(("files", "message"), [
    ({"data.npz": b""}, "not a readable .npz archive (the file is empty)"),
    ({"data.npy": b""}, "not a readable .npy array (the file is empty)"),
    ({"data.npy": np.array([{"a": 1}] * 3)}, "pickled Python objects"),
    ({"data/0.npy": X[0], "data/1.npy": X[1], "data/2.npy": X[2], "data/labels.npy": b"0 1 2"},
     "labels.npy: not a readable .npy array"),
    ({"data/train/cat/0.png": "image", "data/train/dog/0.png": "image"}, "class folder(s) train hold no images"),
    ({"data/0.png": "image", "data/cat": None}, "images beside class folders"),
])
def test_data_files_and_folders_that_cannot_be_read(tmp_path, files, message):
    for name, content in files.items():
        _write(tmp_path / name, content)
    with pytest.raises(BadInput, match=re.escape(message)):
        load_data(str(tmp_path / next(iter(files)).split("/")[0]), SPEC)


def test_a_recipe_whose_factory_raises_is_one_line(tmp_path, monkeypatch):
    from edgekit.recipes import load_recipe, recipe_arrays

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "recipe_source.py").write_text("def build():\n    raise RuntimeError('no such files')\n")
    (tmp_path / "r.yaml").write_text("name: r\nmodel: edgekit.demo:build\nsource: recipe_source:build\n")
    with pytest.raises(BadInput, match="recipe r: source recipe_source:build raised RuntimeError: no such files"):
        recipe_arrays(load_recipe(tmp_path / "r.yaml"))


@pytest.mark.parametrize(("spec", "message"), [
    (":build", "expected package.module:name"),
    (".demo:build", "expected package.module:name"),
    ("edgekit.demo:", "expected package.module:name"),
    ("os:getcwd", "is a built-in function"),
    ("os:sep", "is a str"),
])
def test_module_specs_that_name_no_python_function(spec, message):
    from edgekit.util import import_object

    with pytest.raises(BadInput, match=message):
        import_object(spec, "model factory")


def test_input_shapes_too_large_to_allocate_are_refused():
    from edgekit.models import parse_input_shapes

    with pytest.raises(BadInput, match="more than edgekit takes"):
        parse_input_shapes(["x:1,99999999999"])
    assert parse_input_shapes(["x:1,3,224,224"]) == [("x", (1, 3, 224, 224), "float32")]


@pytest.mark.parametrize(("settings", "message"), [
    ({"min_time_s": float("nan")}, "--duration"),
    ({"min_time_s": float("inf")}, "--duration"),
])
def test_profile_settings_refuse_nonsense(settings, message):
    from edgekit.profile import ProfileSettings

    with pytest.raises(BadInput, match=message):
        ProfileSettings(**settings)


@pytest.mark.parametrize(("fields", "message"), [
    ({"final_finetune_s": -1.0}, "--finetune"),
    ({"final_finetune_s": float("nan")}, "--finetune"),
    ({"time_limit_s": float("nan")}, "--time-limit"),
])
def test_search_requests_refuse_nonsense(fields, message):
    from edgekit.search.loop import SearchRequest

    with pytest.raises(BadInput, match=message):
        SearchRequest(target="host", speedup=2.0, **fields)
