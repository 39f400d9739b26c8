"""`edgekit profile ARTIFACT`: measure an engine file already built, with or without data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.backends.base import backend_for_file
from edgekit.backends.inputs import engine_inputs
from edgekit.data import load_data
from edgekit.errors import BadInput, MissingRuntime, runtime_message
from edgekit.latency import Latency
from edgekit.profile import ProfileSettings, accuracy, time_engine
from edgekit.targets import load_target


def profile_file(artifact: Path, *, target: str | None, data: str | None, settings: ProfileSettings,
                 targets_dir: list[Path], device: str | None = None, devices_file: Path | None = None) -> dict:
    artifact = Path(artifact)
    if not artifact.is_file():
        raise BadInput(f"engine file not found: {artifact}")
    if device is not None:
        return _profile_on_device(artifact, target, data, settings, targets_dir, device, devices_file)
    tgt = load_target(target or "host", targets_dir)
    backend = backend_for_file(artifact, tgt.backend.name)
    availability = backend.available(tgt)
    if not (tgt.local and availability.run):
        raise MissingRuntime(f"cannot measure on {tgt.name} from here: {availability.reason or 'the device is not this machine'}")
    engine = backend.load(backend.artifact_from_file(artifact), target=tgt, threads=settings.threads or tgt.cores)
    try:
        specs = engine_inputs(artifact, engine)
    except Exception as err:
        raise BadInput(f"{artifact.name}: cannot read its inputs ({runtime_message(err, 160)})") from err
    samples = load_data(data, specs) if data else None
    rng = np.random.default_rng(0)
    feed = samples.sample(0) if samples else {
        s.name: (np.ones(s.shape, s.dtype) if np.dtype(s.dtype).kind in "iub" else rng.standard_normal(s.shape).astype(s.dtype))
        for s in specs}
    source = f"measured on {tgt.name} ({tgt.device}) with {backend.name}"
    latency = Latency.from_samples(time_engine(engine, feed, settings), source)
    result = {
        "artifact": str(artifact), "target": tgt.name, "backend": backend.name, "threads": settings.threads or tgt.cores,
        "inputs": "data" if samples else "synthetic (no --data)",
        "latency_ms": latency.as_dict(), "throughput_fps": round(1e3 / latency.mean, 1),
        "layers": [layer.__dict__ for layer in engine.layer_times(feed, settings.layer_runs)],
    }
    if samples is not None and samples.labels is not None:
        # No source model here: accuracy against the labels only (agreement needs `deploy`).
        result["accuracy"] = accuracy(engine, samples, engine.run).as_dict()
    return result


def _profile_on_device(artifact: Path, target: str | None, data: str | None, settings: ProfileSettings,
                       targets_dir: list[Path], name: str, devices_file: Path | None) -> dict:
    """The engine file sent to the inventory's device and measured there by its agent (the first
    sample of --data as the input, else synthetic); accuracy needs the source model: `deploy --device`."""
    import tempfile

    from edgekit.agent.security import UPLOAD_SUFFIXES
    from edgekit.devices import load_inventory
    from edgekit.remote import check_device

    device = load_inventory(devices_file).get(name)
    tgt = load_target(target or device.target, targets_dir)
    check_device(device, tgt, targets_dir)
    if artifact.suffix.lower() not in UPLOAD_SUFFIXES:
        raise BadInput(f"{artifact.name}: the agent takes .onnx, OpenVINO IR and .tflite files, never a serialized "
                       f"'{artifact.suffix}' engine (it could carry plugin code): let the device build it from the ONNX, "
                       f"edgekit deploy --target {tgt.name} --device {name}")
    with tempfile.TemporaryDirectory() as tmp, device.client() as client:
        inputs = None
        if data:
            backend = backend_for_file(artifact, tgt.backend.name)
            engine = backend.load(backend.artifact_from_file(artifact), target=tgt, threads=1)
            samples = load_data(data, engine_inputs(artifact, engine))
            inputs = Path(tmp) / "inputs.npz"
            np.savez(inputs, **samples.sample(0))
        result = client.profile(artifact, tgt.name, settings, inputs)
    result["device"] = {"name": device.name, "url": device.url, **result.get("agent", {})}
    result["inputs"] = "the first sample of --data" if data else "synthetic (no --data)"
    return result
