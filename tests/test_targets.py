import json
from pathlib import Path

import pytest
import yaml

from edgekit.errors import BadInput
from edgekit.targets import FIGURES, list_targets, load_target, shipped_dir
from tests.conftest import run_cli

SEED_TARGETS = {"host", "intel-cpu", "intel-igpu", "intel-npu", "jetson-nano", "jetson-xavier-nx",
                "jetson-orin-nano", "jetson-agx-orin", "rpi4", "rpi5", "coral-edgetpu", "kv260", "zcu104"}


def test_every_shipped_target_loads_with_a_source_for_every_figure():
    targets = {t.name: t for t in list_targets()}
    assert SEED_TARGETS <= set(targets)
    for target in targets.values():
        for figure in FIGURES:
            keys = [f"{figure}.{p}" for p in target.peak_gops] if figure == "peak_gops" else [figure]
            for key in keys:
                assert key in target.sources or figure in target.sources, (target.name, key)
        assert set(target.precisions.supported) <= set(target.peak_gops)
        assert set(target.precisions.supported) <= set(target.alignment)


@pytest.mark.parametrize(("alias", "name"), [("jetson", "jetson-orin-nano"), ("rpi", "rpi5"),
                                             ("tpu", "coral-edgetpu"), ("fpga", "kv260")])
def test_aliases(alias, name):
    assert load_target(alias).name == name


def test_family_file_is_merged_and_overridden():
    nano, orin = load_target("jetson-nano"), load_target("jetson-orin-nano")
    assert nano.backend.name == orin.backend.name == "tensorrt"
    assert "int8" in orin.precisions.fast
    assert "int8" not in nano.precisions.fast  # Maxwell: no fast int8
    assert (shipped_dir() / "_jetson.yaml").stem not in {t.name for t in list_targets()}


def test_host_is_detected_and_its_peaks_are_measured_once(tmp_path):
    host = load_target("host")
    assert host.cores >= 1 and host.ram_mb > 0
    assert host.peak_gops["fp32"] > 0 and host.peak_gops["int8"] > 0
    assert "measured here on" in host.sources["peak_gops.fp32"]
    assert host.device != "detected at run time"
    from edgekit.host import measured_peaks

    assert measured_peaks() == measured_peaks()  # the second call reads the cache


def _write(folder: Path, name: str, data: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _valid(name: str) -> dict:
    data = yaml.safe_load((shipped_dir() / "rpi4.yaml").read_text())
    data.update(name=name, aliases=[])
    return data


def test_user_targets_dir_and_env_path(tmp_path, monkeypatch):
    own = tmp_path / "mine"
    own.mkdir()
    (own / "_rpi.yaml").write_text((shipped_dir() / "_rpi.yaml").read_text())
    _write(own, "my-board", _valid("my-board"))
    assert load_target("my-board", [own]).name == "my-board"
    monkeypatch.setenv("EDGEKIT_TARGETS_PATH", str(own))
    assert "my-board" in {t.name for t in list_targets()}


def test_wrong_type_names_file_and_field(tmp_path):
    data = _valid("broken")
    data["ram_mb"] = "lots"
    (tmp_path / "_rpi.yaml").write_text((shipped_dir() / "_rpi.yaml").read_text())
    path = _write(tmp_path, "broken", data)
    with pytest.raises(BadInput, match=r"broken\.yaml: field 'ram_mb'"):
        load_target(str(path))


def test_missing_source_is_refused(tmp_path):
    data = _valid("unsourced")
    (tmp_path / "_rpi.yaml").write_text((shipped_dir() / "_rpi.yaml").read_text())
    data["sources"] = {k: v for k, v in data["sources"].items() if k != "peak_gops.int8"}
    with pytest.raises(BadInput, match="sources has no entry for.*peak_gops.int8"):
        load_target(str(_write(tmp_path, "unsourced", data)))


def test_invalid_yaml_and_unknown_target(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(BadInput, match="bad.yaml.*not valid YAML"):
        load_target(str(bad))
    with pytest.raises(BadInput, match="unknown target 'nope'.*rpi5"):
        load_target("nope")


def test_cli_targets_list_and_show_json():
    listed = run_cli("targets", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    targets = json.loads(listed.stdout)
    assert len(targets) >= 13 and all(t["sources"] for t in targets)
    shown = run_cli("targets", "show", "tpu", "--json")
    assert json.loads(shown.stdout)["ops"]["int8_only"] is True
