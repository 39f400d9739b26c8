"""Where engines are timed: on this machine (`LocalMeasurer`) or on a device of the inventory through
its edgekit agent (`AgentMeasurer`). What is timed (an engine, two side by side, a cost-model unit)
stays with the caller; `measurer_for` is the one place that decides where.

Both build the engine here where its backend can (the agent then receives the engine files); they
differ in what must be present here: a local measurer needs the runtime to *run* here and the target
to be this machine, an agent only needs the engine *built* here (or built on the device itself)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgekit import remote
from edgekit.backends.base import BACKENDS, Artifact, Availability, Backend, Engine, LayerTime
from edgekit.profile import ProfileSettings, time_engine, time_interleaved
from edgekit.targets import Target
from edgekit.unit_timing import profile_unit


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


@dataclass(frozen=True)
class AgentMeasurer:
    """Engines built here, sent to the device's agent and timed there (`edgekit.remote`)."""

    device: object  # edgekit.devices.Device

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


LOCAL = LocalMeasurer()


def measurer_for(device) -> Measurer:
    """The one place that decides where engines are timed: the inventory device given, else here."""
    return AgentMeasurer(device) if device is not None else LOCAL
