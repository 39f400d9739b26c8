"""`edgekit profile`: an engine already built, measured on its target (or a device of the inventory)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli.console import err, out, print_json
from edgekit.cli.options import (
    DeviceName,
    DevicesFile,
    Duration,
    JsonOut,
    TargetsDir,
    Threads,
    options_command,
    profile_settings,
)

# Library modules are imported inside the commands, so that `edgekit --help` loads none of them.


@dataclass(frozen=True, kw_only=True)
class ProfileOptions:
    artifact: Annotated[Path, typer.Argument(help="Engine file: OpenVINO IR .xml, .onnx or .tflite.")]
    target: Annotated[str | None, typer.Option("--target", "-t", help="Target the engine runs on (default: the device's, else host).")] = None
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data for accuracy (default: timing only, synthetic input).")] = None
    repeats: Annotated[int, typer.Option(help="Timed inferences (at least).")] = 100
    warmup: Annotated[int, typer.Option(help="Warm-up inferences (at least).")] = 10
    threads: Threads = None
    duration: Duration = 1.0
    device: DeviceName = None
    devices: DevicesFile = None
    targets_dir: TargetsDir = None
    as_json: JsonOut = False


@options_command(ProfileOptions)
def profile(opts: ProfileOptions) -> None:
    """Measure an engine on the target: latency percentiles, per-layer times, memory (and accuracy with --data)."""
    from edgekit.profile_file import profile_file

    settings = profile_settings(opts.repeats, opts.warmup, opts.threads, opts.duration)
    with err.status("profiling…"):
        result = profile_file(opts.artifact, target=opts.target, data=opts.data, settings=settings,
                              targets_dir=opts.targets_dir or [], device=opts.device, devices_file=opts.devices)
    if opts.as_json:
        print_json(result)
        return
    lat = result["latency_ms"]
    out.print(f"{opts.artifact.name} on {result['target']} ({result['backend']}): p50 {lat['p50']:.4f} ms · "
              f"p90 {lat['p90']:.4f} · p99 {lat['p99']:.4f} ms ({lat['kind']}, {lat['samples']} runs, {result['threads']} threads)")
    for layer in sorted(result["layers"], key=lambda x: x["time_ms"], reverse=True)[:10]:
        out.print(f"  {layer['time_ms'] * 1e3:9.1f} µs  {layer['op']:<16} {layer['exec_type']:<22} {layer['name']}")
    if result.get("accuracy"):
        out.print(f"accuracy: {result['accuracy']}")
