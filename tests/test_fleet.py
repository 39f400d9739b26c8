"""Fleets end to end: a two-class fleet (host + rpi5) built, judged, bundled, signed and exported with the
real OTA tools; the cache on the second run; byte-identical bundles; tampering refused by edgekit and by
each OTA tool; bad manifests in one line naming the class; the same builds as Ray tasks."""

import json
import shutil
import tarfile

import pytest

from edgekit.errors import BadInput, Failure
from edgekit.fleet import bundle as bundles
from edgekit.fleet import ota
from tests.conftest import run_cli

TWO_CLASSES = """\
fleet: test-fleet
ota: [mender, rauc, swupdate]
classes:
  gateway:
    target: host
    precision: int8
    version: 1.0.0
    budgets: {memory_mb: 16, max_accuracy_drop: 1.0}
  camera-pi:
    target: rpi5
    version: 2.1.0
    budgets: {memory_mb: 64, max_accuracy_drop: 1.0}
"""


def tool_missing(kind: str) -> str | None:
    missing = [t for t in ota.TOOLS[kind] if ota._which(t) is None]
    return f"{kind} needs {', '.join(missing)} (apt install mender-artifact rauc squashfs-tools swupdate)" if missing else None


def one_line(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout[-500:], result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """The fleet built twice with one cache: the first run builds, the second takes both from the cache."""
    root = tmp_path_factory.mktemp("fleet")
    manifest = root / "fleet.yaml"
    manifest.write_text(TWO_CLASSES)
    runs = []
    for n in (1, 2):
        result = run_cli("fleet", "build", str(manifest), "--out", str(root / f"dist{n}"), "--cache", str(root / "cache"),
                         "--key", str(root / "keys" / "fleet.key"), "--json")
        assert result.returncode == 0, result.stderr[-2000:]
        runs.append(json.loads(result.stdout))
    return root, runs


@pytest.mark.slow
def test_two_classes_are_built_bundled_signed_and_exported(fleet):
    root, (first, _) = fleet
    assert first["built"] == 2 and first["cached"] == 0 and first["failed"] == 0 and first["made_key"]
    for name, version, target, engine in (("gateway", "1.0.0", "host", "model.xml"), ("camera-pi", "2.1.0", "rpi5", ".tflite")):
        result = first["classes"][name]
        assert result["state"] == "built" and result["error"] is None
        tar = root / "dist1" / f"{name}-{version}.tar"
        assert result["bundle"] == str(tar) and (root / "dist1" / f"{name}-{version}.tar.sig").stat().st_size == 64
        manifest = bundles.verify(tar, root / "keys" / "fleet.key.pub")
        assert manifest["class"] == name and manifest["version"] == version and manifest["target"]["name"] == target
        assert any(f.endswith(engine) for f in manifest["files"]) and manifest["calibration_set_sha256"]
        assert manifest["runtime"]["backend"] in ("openvino", "tflite") and manifest["plan"]["label"] == "int8"
        assert manifest["profile"]["latency_ms"]["kind"] == ("measured" if target == "host" else "predicted")
        assert all(b["met"] for b in manifest["budgets"].values())
        for kind, made in result["ota"].items():
            if tool_missing(kind):
                assert made.startswith("skipped:")
            else:
                assert made == str(tar.with_suffix(ota.SUFFIX[kind]))


@pytest.mark.slow
def test_the_second_run_is_all_cache_hits_and_gives_byte_identical_bundles(fleet):
    root, (_, second) = fleet
    assert second["built"] == 0 and second["cached"] == 2 and not second["made_key"]
    for name in ("gateway-1.0.0.tar", "camera-pi-2.1.0.tar"):
        assert (root / "dist1" / name).read_bytes() == (root / "dist2" / name).read_bytes()


def test_bundles_are_reproducible_whatever_the_order_and_clock(tmp_path, monkeypatch):
    a, b = tmp_path / "b.bin", tmp_path / "a.xml"
    a.write_bytes(b"\x00weights" * 100)
    b.write_bytes(b"<net/>")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    one = bundles.write_bundle(tmp_path / "one.tar", {"model.bin": a, "model.xml": b}, {"class": "c", "version": "1"})
    b.touch()  # a newer file time changes nothing
    two = bundles.write_bundle(tmp_path / "two.tar", {"model.xml": b, "model.bin": a}, {"version": "1", "class": "c"})
    assert one.read_bytes() == two.read_bytes()
    with tarfile.open(one) as tar:
        assert [m.name for m in tar.getmembers()] == ["manifest.json", "model.bin", "model.xml"]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in tar.getmembers()} == {(1700000000, 0, 0, "", 0o644)}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert bundles.write_bundle(tmp_path / "three.tar", {"model.bin": a, "model.xml": b},
                                {"class": "c", "version": "1"}).read_bytes() != one.read_bytes()


def _flipped(path, at: int):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_one_flipped_byte_in_a_bundle_or_its_signature_is_refused(fleet, tmp_path):
    root, _ = fleet
    key = root / "keys" / "fleet.key.pub"
    original = root / "dist1" / "gateway-1.0.0.tar"
    with tarfile.open(original) as tar:
        offsets = {m.name: m.offset_data for m in tar.getmembers()}
    targets = {"manifest.json": offsets["manifest.json"] + 40, "model.xml": offsets["model.xml"] + 100,
               "model.bin": offsets["model.bin"] + 5000, "a tar header": 0}
    for what, at in targets.items():
        copy = tmp_path / "gateway-1.0.0.tar"
        shutil.copyfile(original, copy)
        shutil.copyfile(str(original) + ".sig", str(copy) + ".sig")
        assert bundles.verify(copy, key)["class"] == "gateway"
        _flipped(copy, at)
        result = run_cli("bundle", "verify", str(copy), "--key", str(key))
        assert "signature does not match" in one_line(result, 2), what
        with pytest.raises(BadInput, match="signature does not match"):
            bundles.verify(copy, key)
    shutil.copyfile(original, copy)
    _flipped(copy.with_name(copy.name + ".sig"), 10)
    assert "signature does not match" in one_line(run_cli("bundle", "verify", str(copy), "--key", str(key)), 2)
    # re-signed by someone with the key but with a changed file: the hash check still refuses it
    shutil.copyfile(original, copy)
    _flipped(copy, offsets["model.bin"] + 5000)
    bundles.sign(copy, root / "keys" / "fleet.key")
    with pytest.raises(BadInput, match="model.bin does not match its sha256"):
        bundles.verify(copy, key)
    other = tmp_path / "other.key"
    bundles.keygen(other)
    shutil.copyfile(original, copy)
    shutil.copyfile(str(original) + ".sig", str(copy) + ".sig")
    assert "signature does not match" in one_line(run_cli("bundle", "verify", str(copy), "--key", str(other) + ".pub"), 2)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mender", "rauc", "swupdate"])
def test_the_ota_tool_refuses_a_flipped_byte(fleet, tmp_path, kind):
    if tool_missing(kind):
        pytest.skip(tool_missing(kind))
    root, _ = fleet
    made = root / "dist1" / f"camera-pi-2.1.0{ota.SUFFIX[kind]}"
    key = root / "keys" / "fleet.key"
    ota.verify(kind, made, key, target="rpi5")  # the tool takes the untouched artifact
    size = made.stat().st_size
    for at in (size // 3, size // 2):  # inside the signed payload (the bundle and its signature)
        copy = tmp_path / made.name
        shutil.copyfile(made, copy)
        _flipped(copy, at)
        with pytest.raises(Failure, match="refused"):
            ota.verify(kind, copy, key, target="rpi5")


@pytest.mark.parametrize("old, new, words", [
    ("target: host", "target: nowhere", "unknown target 'nowhere'"),
    ("precision: int8", "precision: int8\n    model: missing/model.onnx", "model not found"),
    ("version: 1.0.0", "version: ../1", "version"),
    ("precision: int8", "precision: fp8", "fp8"),
    ("precision: int8", "precision: int8\n    metric: nonsense", "unknown metric 'nonsense'"),
    ("version: 1.0.0", "version: 1.0", "quote it: '1.0'"),
])
def test_a_bad_manifest_is_one_line_naming_the_class(tmp_path, old, new, words):
    (tmp_path / "fleet.yaml").write_text(TWO_CLASSES.replace(old, new, 1))
    result = run_cli("fleet", "build", str(tmp_path / "fleet.yaml"), "--out", str(tmp_path / "dist"))
    stderr = one_line(result, 2)
    assert "class 'gateway'" in stderr and words in stderr, stderr
    assert not (tmp_path / "dist").exists()  # nothing built from a manifest that does not check out


@pytest.mark.slow
def test_a_failing_class_does_not_stop_the_others(fleet, tmp_path):
    root, _ = fleet
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(TWO_CLASSES.replace("budgets: {memory_mb: 64,", "budgets: {memory_mb: 0.001,")
                        + "  broken:\n    target: host\n    model: tests.no_such_module:build\n    data: x.npz\n    version: '1'\n")
    (tmp_path / "x.npz").write_bytes(b"")
    result = run_cli("fleet", "build", str(manifest), "--out", str(tmp_path / "dist"), "--cache", str(root / "cache"),
                     "--key", str(root / "keys" / "fleet.key"), "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    classes = summary["classes"]
    assert classes["gateway"]["state"] == "cached" and classes["gateway"]["bundle"]  # built before, shipped again
    assert "budget not met: memory_mb" in classes["camera-pi"]["error"] and classes["camera-pi"]["bundle"] is None
    assert "cannot import module 'tests.no_such_module'" in classes["broken"]["error"]
    assert "2 class(es) failed" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_ray_runs_the_same_builds_as_tasks(tmp_path):
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("fleet: ray-fleet\nota: []\nclasses:\n  gateway:\n    target: host\n    version: '3'\n"
                        "  gateway-copy:\n    target: host\n    version: '3'\n")
    result = run_cli("fleet", "build", str(manifest), "--out", str(tmp_path / "dist"), "--cache", str(tmp_path / "cache"),
                     "--key", str(tmp_path / "fleet.key"), "--executor", "ray", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["executor"] == "ray" and summary["built"] == 2  # one Ray task: the two classes are one build
    assert len(list((tmp_path / "cache").iterdir())) == 1
    for name in ("gateway", "gateway-copy"):
        assert bundles.verify(tmp_path / "dist" / f"{name}-3.tar", tmp_path / "fleet.key.pub")["class"] == name


@pytest.mark.slow
def test_a_fresh_rebuild_gives_a_byte_identical_bundle(fleet, tmp_path):
    """No cache: the Pi class is built again from scratch (export, calibration, LiteRT conversion, the
    accuracy check) and its bundle is the same bytes. (A class measured here differs in its measured
    latency only: its engine files are the same.)"""
    root, _ = fleet
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(TWO_CLASSES.split("  gateway:")[0] + "  camera-pi:" + TWO_CLASSES.split("  camera-pi:")[1])
    result = run_cli("fleet", "build", str(manifest), "--out", str(tmp_path / "dist"), "--cache", str(tmp_path / "fresh"),
                     "--key", str(root / "keys" / "fleet.key"), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["built"] == 1
    assert (tmp_path / "dist" / "camera-pi-2.1.0.tar").read_bytes() == (root / "dist1" / "camera-pi-2.1.0.tar").read_bytes()


def test_class_devices_are_checked_against_the_inventory(tmp_path):
    from edgekit.fleet.manifest import load_fleet

    (tmp_path / "devices.yaml").write_text("devices:\n  - {name: pi-1, target: rpi5, url: 'http://10.0.0.2:8700', token_file: t}\n")
    text = TWO_CLASSES.replace("version: 2.1.0", "version: 2.1.0\n    devices: [pi-1]")
    (tmp_path / "fleet.yaml").write_text("devices_file: devices.yaml\n" + text)
    assert load_fleet(tmp_path / "fleet.yaml").classes["camera-pi"].devices == ("pi-1",)
    (tmp_path / "fleet.yaml").write_text("devices_file: devices.yaml\n" + text.replace("devices: [pi-1]", "devices: [pi-2]"))
    with pytest.raises(BadInput, match="class 'camera-pi': no device 'pi-2'"):
        load_fleet(tmp_path / "fleet.yaml")
    (tmp_path / "fleet.yaml").write_text("devices_file: devices.yaml\n" + text.replace("target: rpi5", "target: rpi4"))
    with pytest.raises(BadInput, match=r"class .camera-pi.: device .pi-1. is a rpi5 \(http://10.0.0.2:8700\), not a rpi4"):
        load_fleet(tmp_path / "fleet.yaml")


def test_class_devices_need_an_inventory_to_be_found_in(tmp_path, monkeypatch):
    from edgekit.fleet.manifest import load_fleet

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGEKIT_DEVICES", raising=False)
    (tmp_path / "fleet.yaml").write_text(TWO_CLASSES.replace("version: 2.1.0", "version: 2.1.0\n    devices: [pi-1]"))
    with pytest.raises(BadInput, match="class 'camera-pi' lists devices but there is no inventory"):
        load_fleet(tmp_path / "fleet.yaml")
