"""Whole-model latencies measured on devices through their agents, kept per device: they join the published anchors
of their target's fit (edgekit.anchored), as the host's measurements join its lookup table's calibration.

A measurement is this runtime on the target's own hardware, the thing every published anchor only approximates
(another runtime, other clocks, pre-processing timed with it), so it is the most trustworthy anchor there is.
One JSON file per device, `cache_dir()/device-latencies/DEVICE.json`: the device, its target, and each measurement
(model, precision, the model's features on the target's roofline as `anchored.features` computes them, the measured
p50, when), written atomically. A measurement taken while the target's peak rates or bandwidth were other figures
is skipped: its features were computed on another roofline. A file that cannot be read is skipped with a one-line
warning and left for the user to look at; the next measurement on that device moves it aside (`.corrupt`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

from edgekit.targets import Target
from edgekit.util import atomic_write_text, cache_dir

FORMAT = 1
KEEP = 200  # the latest measurements per device (a search on a device measures every candidate)
log = logging.getLogger(__name__)
_WARNED: set[Path] = set()  # files already warned about in this process


def folder() -> Path:
    return cache_dir() / "device-latencies"


def path_for(device: str) -> Path:
    return folder() / ("".join(c if c.isalnum() or c in ".-_" else "-" for c in device) + ".json")


def roofline_figures(target: Target) -> dict:
    """The figures a measurement's features depend on (edgekit.roofline)."""
    return {"peak_gops": dict(target.peak_gops), "memory_bandwidth_gbs": target.memory_bandwidth_gbs}


def record(device: str, target: Target, *, model: str, precision: str, features: dict, ms: float) -> Path:
    """Add one measurement of a whole model on `device` (a `target`) to the device's file."""
    path = path_for(device)
    data = _read(path) if path.is_file() else None
    if path.is_file() and data is None:
        path.replace(path.with_name(path.name + ".corrupt"))
    if data is None or data.get("target") != target.name:
        data = {"format": FORMAT, "device": device, "target": target.name, "measurements": []}
    data["measurements"].append({
        "model": model, "precision": precision, "features": features, "ms": float(ms),
        "roofline": roofline_figures(target), "when": dt.datetime.now().isoformat(timespec="seconds")})
    data["measurements"] = data["measurements"][-KEEP:]
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def for_target(target: Target) -> list[dict]:
    """Every measurement on devices of `target` taken on its current roofline, each with its device's name."""
    found = []
    for path in sorted(folder().glob("*.json")):
        data = _read(path)
        if data is None or data.get("target") != target.name:
            continue
        found += [{**m, "device": data["device"], "target": target.name} for m in data["measurements"]
                  if m.get("roofline") == roofline_figures(target)]
    return found


def stamp() -> tuple:
    """What the device files are now (names, sizes, times): a fit joined with them is redone when it changes."""
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder())))
    except OSError:
        return ()


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
        rows = data["measurements"]
        if data.get("format") != FORMAT or not all(m["ms"] > 0 and isinstance(m["features"], dict) for m in rows):
            raise ValueError("not a device-latencies file")
        return data
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        if path in _WARNED:
            return None
        _WARNED.add(path)
        log.warning(f"edgekit: warning: {path}: skipped, not a device-latencies file ({type(err).__name__}); "
                    f"predictions use the published anchors alone")
        return None
