"""One job, run with this machine's own backend: load (or first build) the engine, feed it the
uploaded arrays or synthetic ones, and measure it with edgekit's harness. The worker runs this module
as a child process per job, so a runtime that crashes or leaks takes only its job down, and each
measurement has a fresh process (`python -m edgekit.agent.runner JOB_DIR [PARENT_PID]`)."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import platform
import signal
import socket
import sys
from pathlib import Path

import numpy as np

from edgekit import __version__
from edgekit.agent.protocol import JobSpec
from edgekit.backends.base import Artifact, backend_for_file, get_backend
from edgekit.backends.inputs import engine_inputs
from edgekit.backends.tensorrt_dla import with_dla
from edgekit.errors import BadInput, EdgekitError, Failure, MissingRuntime, runtime_message
from edgekit.host import cpu_name
from edgekit.plan import PrecisionPlan
from edgekit.profile import ProfileSettings, _rss_mb, profile_engine, time_rounds
from edgekit.targets import Reach, Target, load_target
from edgekit.unit_timing import profile_unit
from edgekit.util import sha256_file, write_json

OUTCOME = "outcome.json"  # {"result": {...}} or {"error": "one line"}, written by the child


# Instruction sets a target may list → the processor family they belong to.
ARM_ISA = {"NEON", "DOTPROD", "I8MM", "SVE", "SVE2"}
X86_ISA = {"AVX2", "FMA", "AVX-512", "AVX512-VNNI", "AVX-VNNI", "AVX512-BF16", "AVX512-FP16", "AMX", "AMX-INT8"}


def device_target(name: str) -> Target:
    """The target as the device sees it: the engine runs here, whatever its YAML says about reaching it
    (`reach: agent` is how a host gets to the device, not something the device itself needs). An agent
    on an x86 box refuses an Arm target's jobs (and the reverse): its numbers would be labelled as the
    device's."""
    target = load_target(name, [])
    family = "arm" if set(target.isa) & ARM_ISA else "x86" if set(target.isa) & X86_ISA else None
    machine = platform.machine().lower()
    here = "arm" if machine.startswith(("arm", "aarch")) else "x86" if machine in ("x86_64", "amd64", "i686", "i386") else None
    if family and here and family != here:
        names = {"arm": "Arm", "x86": "x86"}
        raise MissingRuntime(f"{target.name} is an {names[family]} device and this agent runs on {socket.gethostname()}, "
                             f"an {names[here]} machine ({machine}): run the agent on the {target.name} itself")
    return target.model_copy(update={"reach": Reach()})


def run_job(job_dir: Path) -> dict:
    """The result of the job in `job_dir` (its spec.json and files/); EdgekitError when it fails."""
    job_dir = Path(job_dir)
    spec = JobSpec.model_validate_json((job_dir / "spec.json").read_text())
    files = job_dir / "files"
    target = device_target(spec.target)
    settings = spec.settings.profile_settings()
    inputs = files / spec.inputs if spec.inputs else None
    if spec.kind == "build":
        plan = PrecisionPlan(**(spec.plan.model_dump() if spec.plan else {}))
        target = target if spec.dla_core is None else with_dla(target, spec.dla_core)
        return build_and_profile(files / spec.artifact, plan=plan, target=target, settings=settings, inputs=inputs,
                                 out_dir=files / "engine")
    if spec.kind == "unit":
        return time_unit(files / spec.artifact, target=target, precision=spec.precision, runs=settings.repeats, wall=spec.wall)
    return profile_artifact(files / spec.artifact, target=target, settings=settings, inputs=inputs,
                            beside=files / spec.beside if spec.beside else None, layer_rounds=spec.layer_rounds)


def time_unit(onnx_path: Path, *, target: Target, precision: str, runs: int, wall: bool) -> dict:
    """One latency-table unit timed here as the host's table would time it locally (`profile_unit`)."""
    import onnx

    backend = get_backend(target.backend.name)
    availability = backend.available(target)
    if not availability.run:
        raise MissingRuntime(f"cannot run {backend.name} on {socket.gethostname()}: {availability.reason or 'not usable here'}")
    try:
        model = onnx.load(str(onnx_path))
    except Exception as err:
        raise BadInput(f"{onnx_path.name}: not an ONNX model ({runtime_message(err, 160)})") from err
    ms, wall_ms, kernels = profile_unit(model, target, backend, precision, runs, wall)
    return {"ms": ms, "wall_ms": wall_ms, "kernels": kernels, "versions": dict(availability.versions),
            "agent": _agent_facts(socket.gethostname()), "files": {}}


def build_and_profile(onnx_path: Path, *, plan: PrecisionPlan, target: Target, settings: ProfileSettings,
                      inputs: Path | None, out_dir: Path) -> dict:
    """Build the engine here with the target's backend, then measure it; the result lists the built
    files (name → sha256, bytes) the client can download."""
    backend = get_backend(target.backend.name)
    availability = backend.available(target)
    if not availability.build:
        raise MissingRuntime(f"cannot build {backend.name} engines for {target.name} on {socket.gethostname()}: "
                             f"{availability.reason or 'the runtime is not usable here'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        artifact = backend.build(onnx_path=onnx_path, plan=plan, target=target, out_dir=out_dir)
    except EdgekitError:
        raise
    except Exception as err:  # a runtime's own error on a model it cannot take
        raise Failure(f"{backend.name} could not build {onnx_path.name}: {runtime_message(err)}") from err
    if artifact.pending:  # everything before it was built: only the step that needs the runtime is left
        raise MissingRuntime(f"{backend.name} built {onnx_path.name} up to its last step on {socket.gethostname()}, which "
                             f"needs what is not here ({availability.reason or 'the runtime'}): {artifact.pending}")
    result = profile_artifact(artifact.path, target=target, settings=settings, inputs=inputs, artifact=artifact)
    built = {path.relative_to(out_dir).as_posix(): {"sha256": sha256_file(path), "bytes": path.stat().st_size}
             for path in artifact.files if path.is_file()}
    return {**result, "files": built, "build": {"precision": artifact.precision, "plan": plan.as_dict(),
                                                "engine": artifact.path.name, "notes": artifact.notes}}


def profile_artifact(path: Path, *, target: Target, settings: ProfileSettings, inputs: Path | None = None,
                     artifact: Artifact | None = None, beside: Path | None = None, layer_rounds: int = 0) -> dict:
    """Load the engine file with the backend that takes it (the target's own first) and measure it;
    with `beside`, time both in alternating rounds (`time_rounds`) and return every round's times, so
    the host takes their ratio per round as it does locally."""
    path = Path(path)
    backend = backend_for_file(path, target.backend.name)
    availability = backend.available(target)
    host = socket.gethostname()
    if not availability.run:
        raise MissingRuntime(f"cannot run {backend.name} engines for {target.name} on {host}: "
                             f"{availability.reason or 'the runtime is not usable here'}")
    threads = settings.threads or target.cores
    before = _rss_mb()
    engine = backend.load(artifact or backend.artifact_from_file(path), target=target, threads=threads)
    engine_mb = _rss_mb() - before
    try:
        specs = engine_inputs(path, engine)
    except Exception as err:
        raise BadInput(f"{path.name}: cannot read its inputs ({runtime_message(err, 160)})") from err
    feed = _feed(specs, inputs)
    source = (f"measured on {target.name} ({target.device}) with {_runtime(backend.name, availability.versions)} "
              f"through the edgekit agent on {host}")
    rounds = None
    if beside is not None:
        other = backend_for_file(beside, target.backend.name)
        try:
            other_engine = other.load(other.artifact_from_file(beside), target=target, threads=threads)
            engines = {"artifact": engine, "beside": other_engine}
            rounds = time_rounds(engines, feed, settings)
            layers = {kind: [] for kind in engines}
            for _ in range(layer_rounds):
                for kind, each in engines.items():
                    layers[kind].append([dataclasses.asdict(t) for t in each.layer_times(feed, settings.layer_runs or 20)])
        except EdgekitError:
            raise
        except Exception as err:
            raise Failure(f"could not time {path.name} beside {beside.name}: {runtime_message(err)}") from err
        del other_engine
        source += f", side by side with {beside.name}"
    try:
        profile = profile_engine(lambda: engine, feed, settings, threads=threads, source=source,
                                 times=[t for r in rounds["artifact"] for t in r] if rounds else None)
    except EdgekitError:
        raise
    except Exception as err:
        raise Failure(f"{backend.name} failed running {path.name}: {runtime_message(err)}") from err
    return {
        "target": target.name, "device": target.device, "backend": backend.name, "artifact": path.name,
        "threads": threads, "inputs": f"uploaded {inputs.name}" if inputs else "synthetic",
        "latency_ms": profile.latency.as_dict(), "throughput_fps": round(profile.throughput_fps, 1),
        "memory": {**profile.memory, "engine_rss_mb": round(max(engine_mb, 0.0), 2)},
        "layers": [dataclasses.asdict(layer) for layer in profile.layers],
        "files": {},
        "versions": dict(availability.versions),
        "agent": _agent_facts(host),
        **({"rounds": rounds, "layer_rounds": layers} if rounds else {}),
    }


def _feed(specs, inputs: Path | None) -> dict[str, np.ndarray]:
    """The uploaded arrays (names and shapes must be the engine's), or synthetic data like `edgekit profile`'s."""
    if inputs is None:
        rng = np.random.default_rng(0)
        return {s.name: (np.ones(s.shape, s.dtype) if np.dtype(s.dtype).kind in "iub"
                         else rng.standard_normal(s.shape).astype(s.dtype)) for s in specs}
    try:
        with np.load(inputs, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as err:
        raise BadInput(f"{inputs.name}: not a readable .npz of plain arrays ({runtime_message(err, 160)})") from err
    wanted = {s.name: s for s in specs}
    if set(arrays) != set(wanted):
        raise BadInput(f"{inputs.name} has arrays {sorted(arrays)} but the engine's inputs are {sorted(wanted)}")
    feed = {}
    for name, spec in wanted.items():
        if tuple(arrays[name].shape) != tuple(spec.shape):
            raise BadInput(f"{inputs.name}: '{name}' has shape {tuple(arrays[name].shape)}, the engine takes {tuple(spec.shape)}")
        feed[name] = np.ascontiguousarray(arrays[name], dtype=spec.dtype)
    return feed


def _runtime(backend: str, versions: dict[str, str]) -> str:
    """'openvino 2026.4.1', or 'tflite (ai-edge-litert 2.3.0)' where the backend and its package differ in name."""
    if backend in versions:
        return f"{backend} {versions[backend].split('-')[0]}"  # OpenVINO's build suffix stays in "versions"
    first = next(iter(versions.items()), None)
    return f"{backend} ({first[0]} {first[1]})" if first else backend


def _agent_facts(host: str) -> dict:
    return {"hostname": host, "edgekit_version": __version__, "cpu": cpu_name(), "machine": platform.machine(),
            "python": platform.python_version()}


def _die_with_parent(parent: int | None) -> None:
    """Linux: the kernel kills this process when the agent dies (even by kill -9), so an orphan never
    measures alongside the next agent's jobs."""
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the agent died before prctl took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    job_dir = Path(args[0])
    _die_with_parent(int(args[1]) if len(args) > 1 else None)
    try:
        outcome = {"result": run_job(job_dir)}
    except EdgekitError as err:
        outcome = {"error": _client_line(str(err), job_dir)}
    except Exception as err:  # a runtime's own exception type: still one line for the client
        outcome = {"error": _client_line(f"{type(err).__name__}: {runtime_message(err, 300)}", job_dir)}
    write_json(job_dir / OUTCOME, outcome)
    return 0


def _client_line(text: str, job_dir: Path) -> str:
    """One line, with the agent's own folders left out (runtimes quote the full path of the file)."""
    for folder in {str(job_dir / "files"), str(job_dir.resolve() / "files")}:
        text = text.replace(folder + os.sep, "")
    return " ".join(text.split())[:600]


if __name__ == "__main__":
    sys.exit(main())
