"""The device inventory and every measurement through a real agent on loopback: `devices list`,
`deploy --device`, `profile --device`, and the search's closed loop, lookup table and sensitivity
timed by the agent. Nothing is mocked: the agent is `edgekit agent serve` in its own process."""

import json
import time

import pytest

from edgekit import device_latencies
from edgekit.errors import BUDGET_MISSED, BadInput
from tests.agents import Agent
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    """A live agent (`local-agent`, the host) and a dead one (`dead-pi`, nothing listens on its port)."""
    folder = tmp_path_factory.mktemp("devices")
    assert run_cli("agent", "token", str(folder / "token")).returncode == 0
    agent = Agent(folder / "work", folder / "token")
    (folder / "devices.yaml").write_text(
        "devices:\n"
        f"  - {{name: local-agent, target: host, url: '{agent.url}', token_file: token}}\n"
        "  - {name: dead-pi, target: rpi5, url: 'http://127.0.0.1:9', token_file: token}\n")
    yield folder / "devices.yaml", agent
    agent.stop()


def one_line(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_devices_list_says_which_agents_answer(inventory):
    devices, agent = inventory
    started = time.monotonic()
    result = run_cli("devices", "list", "--devices", str(devices), "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["local-agent"]["answers"] and "openvino" in rows["local-agent"]["runtimes"]
    assert not rows["dead-pi"]["answers"] and "does not answer" in rows["dead-pi"]["error"]
    assert time.monotonic() - started < 30  # a dead agent is asked once, briefly


def test_deploy_on_a_device_is_measured_there_through_its_agent(inventory, tmp_path):
    devices, agent = inventory
    out = tmp_path / "run"
    result = run_cli("deploy", "--target", "host", "--device", "local-agent", "--devices", str(devices), "--out", str(out),
                     "--duration", "0.3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    latency = report["latency_ms"]
    assert latency["kind"] == "measured" and "through the edgekit agent" in latency["source"] and latency["samples"] > 0
    assert report["device"]["name"] == "local-agent" and report["device"]["url"] == agent.url
    assert report["status"].startswith("complete; measured on device local-agent")
    assert report["accuracy"]["agreement"] == 1.0 and "checked" not in report["accuracy"]["where"]
    with agent.client() as client:  # the agent ran it: its job is on record with the same numbers
        jobs = [j for j in client.jobs() if j["state"] == "finished"]
        assert any(client.job(j["id"])["result"]["latency_ms"]["p50"] == latency["p50"] for j in jobs)
    # the measurement joins its target's latency fit, kept in the device's file (issue 15)
    stored = json.loads(device_latencies.path_for("local-agent").read_text())
    assert stored["target"] == "host" and stored["measurements"][-1]["ms"] == latency["p50"]
    assert stored["measurements"][-1]["features"]["compute_layers"] == 5


def test_profile_on_a_device(inventory, tmp_path, demo_run):
    devices, _ = inventory
    out, _report = demo_run
    result = run_cli("profile", str(out / "model.xml"), "--device", "local-agent", "--devices", str(devices),
                     "--duration", "0.2", "--json")
    assert result.returncode == 0, result.stderr
    profile = json.loads(result.stdout)
    assert profile["target"] == "host" and profile["device"]["name"] == "local-agent"
    assert profile["latency_ms"]["kind"] == "measured" and "through the edgekit agent" in profile["latency_ms"]["source"]
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"serialized engine")
    refused = run_cli("profile", str(engine), "--device", "local-agent", "--devices", str(devices))
    assert "never a serialized '.engine' engine" in one_line(refused, 2)


def test_a_dead_agent_or_the_wrong_device_is_one_line(inventory, tmp_path):
    devices, _ = inventory
    started = time.monotonic()
    dead = run_cli("deploy", "--target", "rpi5", "--device", "dead-pi", "--devices", str(devices), "--out", str(tmp_path / "dead"))
    assert "does not answer (connection refused)" in one_line(dead, 1)
    assert time.monotonic() - started < 120 and (tmp_path / "dead" / "report.json").is_file()  # nothing built is lost
    wrong = run_cli("deploy", "--target", "host", "--device", "dead-pi", "--devices", str(devices))
    assert "is a rpi5" in one_line(wrong, 2)
    unknown = run_cli("profile", "x.xml", "--device", "nope", "--devices", str(devices))
    assert one_line(unknown, 2)
    missing = run_cli("devices", "list", "--devices", str(tmp_path / "none.yaml"))
    assert "device inventory not found" in one_line(missing, 2)


@pytest.mark.parametrize("text, message", [
    ("devices: [{name: a, target: host, url: 'ftp://x', token_file: t}]", "url must start with http"),
    ("devices: [{name: a, target: host, url: 'http://x', token_file: t, extra: 1}]", "Extra inputs"),
    ("devices: [{name: a, target: host, url: 'http://x'}]", "token_file"),
    ("devices: [{name: '../a', target: host, url: 'http://x', token_file: t}]", "name"),
    ("devices:\n  - {name: a, target: host, url: 'http://x', token_file: t}\n  - {name: a, target: host, url: 'http://y', token_file: t}",
     "listed twice"),
    ("devices: [", "not valid YAML"),
])
def test_bad_inventories_are_refused_in_one_line(tmp_path, text, message):
    from edgekit.devices import load_inventory

    path = tmp_path / "devices.yaml"
    path.write_text(text)
    with pytest.raises(BadInput, match=message) as err:
        load_inventory(path)
    assert "\n" not in str(err.value)


def test_the_inventory_is_found_by_option_environment_then_working_folder(tmp_path, monkeypatch):
    from edgekit.devices import load_inventory

    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "fleet.yaml").write_text("devices: [{name: pi, target: rpi5, url: 'http://pi.local:8700', token_file: keys/pi}]")
    monkeypatch.setenv("EDGEKIT_DEVICES", str(folder / "fleet.yaml"))
    device = load_inventory().get("pi")
    assert device.token_file == folder / "keys" / "pi"  # relative to the inventory's folder
    monkeypatch.delenv("EDGEKIT_DEVICES")
    monkeypatch.chdir(folder)
    with pytest.raises(BadInput, match=r"devices.yaml \(from ./devices.yaml"):
        load_inventory()
    (folder / "devices.yaml").write_text("devices: []")
    assert load_inventory().devices == ()
    with pytest.raises(BadInput, match="no device 'pi'"):
        load_inventory().get("pi")


@pytest.mark.slow
def test_search_on_a_device_measures_everything_through_its_agent(inventory, tmp_path):
    """The search's lookup table, sensitivity timing, original-model anchor and closed loop all run as
    agent jobs: each says so, and the agent's finished jobs include unit timings. One trial: the walk then
    stops before a second round (each round is a build and a side-by-side timing through the agent)."""
    devices, agent = inventory
    out = tmp_path / "search"
    result = run_cli("search", "--target", "host", "--device", "local-agent", "--devices", str(devices), "--speedup", "1.2",
                     "--time-limit", "60", "--trials", "1", "--finetune", "2", "--method", "mse", "--duration", "0.2", "--repeats", "20",
                     "--out", str(out), "--json")
    assert result.returncode in (0, BUDGET_MISSED), result.stderr  # what runs where is checked here, not the budget
    found = json.loads((out / "search.json").read_text())
    assert "through its agent" in found["cost_model"]["source"]
    sensitivity = json.loads((out / "sensitivity" / "sensitivity.json").read_text())
    assert sensitivity["latency"]["source"].startswith("measured on device local-agent")
    assert "device local-agent" in json.loads((out / "original-float" / "latency.json").read_text())["how"]
    first = found["rounds"][0]
    assert first["judged_ms"] is not None and first["measurement"]["ratio"] > 0
    report = json.loads((out / "round-1" / "report.json").read_text())
    assert report["device"]["name"] == "local-agent" and report["side_by_side"]["where"] == "device local-agent through its agent"
    with agent.client() as client:
        kinds = {j["kind"] for j in client.jobs() if j["state"] == "finished"}
    assert {"unit", "profile"} <= kinds
