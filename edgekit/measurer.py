"""Where engines are timed: on this machine (`LocalMeasurer`) or on a device of the inventory through
its edgekit agent (`AgentMeasurer`). What is timed (an engine, two side by side, a cost-model unit)
stays with the caller; `measurer_for` is the one place that decides where.

Both build the engine here where its backend can (the agent then receives the engine files); they
differ in what must be present here: a local measurer needs the runtime to *run* here and the target
to be this machine, an agent only needs the engine *built* here (or built on the device itself)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edgekit import remote
from edgekit.agent.security import UPLOAD_SUFFIXES
from edgekit.backends.base import BACKENDS, Artifact, Availability, Backend, Engine, LayerTime
from edgekit.backends.inputs import engine_inputs
from edgekit.data import load_data
from edgekit.devices import Device, load_inventory
from edgekit.errors import BadInput, MissingRuntime, runtime_message
from edgekit.latency import Latency
from edgekit.profile import (
    AccuracyCheck,
    ProfileSettings,
    accuracy,
    profile_engine,
    side_by_side,
    time_engine,
    time_interleaved,
    time_rounds,
    verify_precision,
)
from edgekit.targets import Target
from edgekit.unit_timing import profile_unit


@dataclass(frozen=True)
class ProfileAsk:
    """One built engine to measure as a deploy's last step."""

    backend: Backend
    artifact: Artifact
    target: Target
    feed: dict[str, np.ndarray]
    settings: ProfileSettings
    source: remote.DeviceBuild  # what a device builds from when the engine's last step is left to it
    planned: dict[str, str]  # each layer's planned precision, to ask the runtime what it executed
    check: AccuracyCheck | None = None
    beside: tuple[str, Artifact] | None = None  # another engine (its name, its build) to time it side by side with
    times: list[float] | None = None  # inference times already taken side by side with fp32 (precision.mixed)


@dataclass(frozen=True)
class Measurement:
    """What measuring a built engine found, in one shape wherever it ran (report.json's fields)."""

    latency: dict
    status: str
    throughput_fps: float | None = None
    threads: int | None = None
    memory: dict | None = None
    layers: list[dict] | None = None
    accuracy: dict | None = None  # None where the engine ran on a device (checked here afterwards)
    side_by_side: dict | None = None
    precision: dict | None = None  # what the runtime executed per planned layer (`verify_precision`)
    device: dict | None = None  # the device and its agent, when measured there


class Measurer(Protocol):
    name: str  # "" here; the device's name through an agent: files and tables measured there say so

    def reaches(self, target: Target) -> bool:
        """Whether this measurer times engines of `target` at all (here: only this machine's targets)."""

    def can_time(self, target: Target, availability: Availability) -> bool:
        """Whether engines of this backend can be timed: built here (agent) or run here (local)."""

    def can_analyse(self, target: Target, availability: Availability) -> bool:
        """Whether engines can be built here, loaded here (for which kernels ran) and timed by this measurer."""

    def where(self, target: Target) -> str:
        """How the figures are labelled: 'TARGET (DEVICE)' here, 'device NAME (TARGET) through its agent' there."""

    def p50(self, backend: Backend, artifact: Artifact, target: Target, feed: dict, settings: ProfileSettings) -> float:
        """One engine timed alone: its median latency in ms."""

    def side_by_side(self, engines: dict[str, Engine], artifacts: dict[str, Artifact], target: Target, feed: dict,
                     settings: ProfileSettings, layer_rounds: int) -> tuple[dict[str, list[float]], dict | None]:
        """Two engines timed in alternating rounds: each one's inference times, and (through an agent)
        its per-layer times over `layer_rounds` rounds (None here: the caller reads the loaded engines)."""

    def unit(self, model, target: Target, backend: Backend | None, precision: str, runs: int,
             wall: bool) -> tuple[float, float | None, list[str]]:
        """A cost-model unit (an ONNX model): its own profiled ms, the wall p50 if asked, the kernels."""

    def runtime(self, backend_name: str, found: tuple[str, str]) -> tuple[str, str]:
        """The runtime and version the timings are filed under (`found`: what this machine has)."""

    def times_units(self, target: Target, availability: Availability | None) -> bool:
        """Whether the cost model's units are timed (else they get the roofline)."""

    def table_name(self, target: Target) -> str:
        """The name a lookup table of units timed by this measurer is filed under (one per device)."""

    def profile(self, ask: ProfileAsk) -> Measurement:
        """A deploy's engine measured: latency percentiles, per-layer times, memory (and accuracy here)."""

    def default_target(self) -> str:
        """The target an engine file is measured as when none is named."""

    def check(self, target: Target, targets_dir: list[Path]) -> None:
        """A clear error where this measurer cannot stand for `target`."""

    def profile_file(self, backend: Backend, path: Path, target: Target, data: str | None, settings: ProfileSettings) -> dict:
        """An engine file built elsewhere, measured (`edgekit profile`); fed --data's first sample, else synthetic."""


@dataclass(frozen=True)
class LocalMeasurer:
    """Engines run on this machine with the target's runtime."""

    name: str = ""

    def reaches(self, target: Target) -> bool:
        return target.local

    def can_time(self, target: Target, availability: Availability) -> bool:
        return target.local and availability.run

    def can_analyse(self, target: Target, availability: Availability) -> bool:
        return target.local and availability.build and availability.run

    def where(self, target: Target) -> str:
        return f"{target.name} ({target.device})"

    def p50(self, backend: Backend, artifact: Artifact, target: Target, feed: dict, settings: ProfileSettings) -> float:
        engine = backend.load(artifact, target=target, threads=settings.threads or target.cores)
        return float(np.median(time_engine(engine, feed, settings)))

    def side_by_side(self, engines: dict[str, Engine], artifacts: dict[str, Artifact], target: Target, feed: dict,
                     settings: ProfileSettings, layer_rounds: int) -> tuple[dict[str, list[float]], dict | None]:
        return time_interleaved(engines, feed, settings), None

    def unit(self, model, target: Target, backend: Backend | None, precision: str, runs: int,
             wall: bool) -> tuple[float, float | None, list[str]]:
        return profile_unit(model, target, backend, precision, runs, wall)

    def runtime(self, backend_name: str, found: tuple[str, str]) -> tuple[str, str]:
        return found

    def times_units(self, target: Target, availability: Availability | None) -> bool:
        return bool(availability and self.can_time(target, availability))

    def table_name(self, target: Target) -> str:
        return target.name

    def profile(self, ask: ProfileAsk) -> Measurement:
        threads = ask.settings.threads or ask.target.cores
        load = lambda: ask.backend.load(ask.artifact, target=ask.target, threads=threads)  # noqa: E731
        source = f"measured on {ask.target.name} ({ask.target.device}) with {ask.backend.name}"
        times, beside = ask.times, None
        if times is not None:
            source += ", side by side with fp32"
        elif ask.beside is not None:
            name, other = ask.beside
            slices = time_rounds({"built": load(), name: ask.backend.load(other, target=ask.target, threads=threads)},
                                 ask.feed, ask.settings)
            beside = side_by_side(name, str(other.path), slices["built"], slices[name])
            times = [t for s in slices["built"] for t in s]
            source += f", side by side with {name}"
        measured = profile_engine(load, ask.feed, ask.settings, threads=threads, source=source, check=ask.check, times=times)
        return Measurement(latency=measured.latency.as_dict(), status="complete", throughput_fps=round(measured.throughput_fps, 1),
                           threads=measured.threads, memory=measured.memory,
                           layers=[layer.__dict__ for layer in measured.layers],
                           accuracy=measured.accuracy.as_dict() if measured.accuracy else None, side_by_side=beside,
                           precision=verify_precision(load(), ask.feed, ask.planned))

    def default_target(self) -> str:
        return "host"

    def check(self, target: Target, targets_dir: list[Path]) -> None:
        return None

    def profile_file(self, backend: Backend, path: Path, target: Target, data: str | None, settings: ProfileSettings) -> dict:
        availability = backend.available(target)
        if not self.can_time(target, availability):
            raise MissingRuntime(f"cannot measure on {target.name} from here: "
                                 f"{availability.reason or 'the device is not this machine'}")
        engine = backend.load(backend.artifact_from_file(path), target=target, threads=settings.threads or target.cores)
        samples = load_data(data, file_inputs(path, engine)) if data else None
        feed = samples.sample(0) if samples else synthetic_feed(file_inputs(path, engine))
        latency = Latency.from_samples(time_engine(engine, feed, settings), f"measured on {self.where(target)} with {backend.name}")
        result = {
            "artifact": str(path), "target": target.name, "backend": backend.name, "threads": settings.threads or target.cores,
            "inputs": "data" if samples else "synthetic (no --data)",
            "latency_ms": latency.as_dict(), "throughput_fps": round(1e3 / latency.mean, 1),
            "layers": [layer.__dict__ for layer in engine.layer_times(feed, settings.layer_runs)],
        }
        if samples is not None and samples.labels is not None:
            # No source model here: accuracy against the labels only (agreement needs `deploy`).
            result["accuracy"] = accuracy(engine, samples, engine.run).as_dict()
        return result


@dataclass(frozen=True)
class AgentMeasurer:
    """Engines built here, sent to the device's agent and timed there (`edgekit.remote`)."""

    device: Device

    @property
    def name(self) -> str:
        return self.device.name

    def reaches(self, target: Target) -> bool:
        return True

    def can_time(self, target: Target, availability: Availability) -> bool:
        return availability.build

    def can_analyse(self, target: Target, availability: Availability) -> bool:
        # the engines are only loaded here (for which kernels ran): a runtime that checks arithmetic is enough
        return availability.build and (availability.run or availability.check)

    def where(self, target: Target) -> str:
        return f"device {self.device.name} ({target.name}) through its agent"

    def p50(self, backend: Backend, artifact: Artifact, target: Target, feed: dict, settings: ProfileSettings) -> float:
        return remote.profile(self.device, artifact, target=target, settings=settings, feed=feed)["latency_ms"]["p50"]

    def side_by_side(self, engines: dict[str, Engine], artifacts: dict[str, Artifact], target: Target, feed: dict,
                     settings: ProfileSettings, layer_rounds: int) -> tuple[dict[str, list[float]], dict[str, list[list[LayerTime]]]]:
        return remote.time_pair(self.device, artifacts, target=target, settings=settings, feed=feed,
                                layer_rounds=layer_rounds)

    def unit(self, model, target: Target, backend: Backend | None, precision: str, runs: int,
             wall: bool) -> tuple[float, float | None, list[str]]:
        return remote.time_unit(self.device, model, target=target, precision=precision, runs=runs, wall=wall)

    def runtime(self, backend_name: str, found: tuple[str, str]) -> tuple[str, str]:
        with self.device.client() as client:
            versions = client.info().get("runtimes", {})
        package = BACKENDS[backend_name].package if backend_name in BACKENDS else backend_name
        return package, versions.get(package, "unknown")

    def times_units(self, target: Target, availability: Availability | None) -> bool:
        return True  # the agent builds each unit from its ONNX, whatever this machine has

    def table_name(self, target: Target) -> str:
        return f"{self.device.name}-{target.name}"

    def profile(self, ask: ProfileAsk) -> Measurement:
        result = remote.measure(self.device, ask.artifact, target=ask.target, settings=ask.settings, feed=ask.feed,
                                source=ask.source, beside=ask.beside)
        device = {"name": self.device.name, "url": self.device.url, "target": self.device.target, **result.get("agent", {}),
                  "versions": result.get("versions", {})}
        if result.get("build"):
            device["built"] = {k: v for k, v in result["build"].items() if k != "notes"} | {"files": result.get("files")}
        return Measurement(latency=result["latency_ms"], status=f"complete; measured on device {self.device.name} through its agent",
                           throughput_fps=result.get("throughput_fps"), threads=result.get("threads"),
                           memory=result.get("memory"), layers=result.get("layers"),
                           side_by_side=result.get("side_by_side"), device=device)

    def default_target(self) -> str:
        return self.device.target

    def check(self, target: Target, targets_dir: list[Path]) -> None:
        remote.check_device(self.device, target, targets_dir)

    def profile_file(self, backend: Backend, path: Path, target: Target, data: str | None, settings: ProfileSettings) -> dict:
        """The file sent to the device's agent; accuracy needs the source model: `deploy --device`."""
        if path.suffix.lower() not in UPLOAD_SUFFIXES:
            raise BadInput(f"{path.name}: the agent takes .onnx, OpenVINO IR and .tflite files, never a serialized "
                           f"'{path.suffix}' engine (it could carry plugin code): let the device build it from the ONNX, "
                           f"edgekit deploy --target {target.name} --device {self.device.name}")
        with tempfile.TemporaryDirectory() as tmp, self.device.client() as client:
            inputs = None
            if data:  # shaped as the engine's inputs, which the runtime here reads
                engine = backend.load(backend.artifact_from_file(path), target=target, threads=1)
                inputs = Path(tmp) / "inputs.npz"
                np.savez(inputs, **load_data(data, file_inputs(path, engine)).sample(0))
            result = client.profile(path, target.name, settings, inputs)
        result["device"] = {"name": self.device.name, "url": self.device.url, **result.get("agent", {})}
        result["inputs"] = "the first sample of --data" if data else "synthetic (no --data)"
        return result


LOCAL = LocalMeasurer()


def measurer_named(device: str | None, devices_file: Path | None = None) -> Measurer:
    """The one place that decides where engines are timed: on the inventory's device named, else here."""
    return LOCAL if device is None else AgentMeasurer(load_inventory(devices_file).get(device))


def measurer_for(device: str | None, target: Target, devices_file: Path | None, targets_dir: list[Path]) -> Measurer:
    """`measurer_named`, checked to stand for `target` (a device's figures are filed under its target)."""
    measurer = measurer_named(device, devices_file)
    measurer.check(target, targets_dir)
    return measurer


def file_inputs(path: Path, engine: Engine):
    """An engine file's inputs, or a clear error naming the file."""
    try:
        return engine_inputs(path, engine)
    except Exception as err:
        raise BadInput(f"{path.name}: cannot read its inputs ({runtime_message(err, 160)})") from err


def synthetic_feed(specs) -> dict[str, np.ndarray]:
    """Ones for integer inputs, seeded normal noise for the rest: a feed where no data is given."""
    rng = np.random.default_rng(0)
    return {s.name: (np.ones(s.shape, s.dtype) if np.dtype(s.dtype).kind in "iub" else rng.standard_normal(s.shape).astype(s.dtype))
            for s in specs}
