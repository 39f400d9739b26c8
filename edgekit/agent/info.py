"""What the device is and what it can run, for `GET /v1/info`: the host decides from this which
jobs to send. Runtimes are found by their installed package, without importing them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import socket
from functools import cache
from pathlib import Path

import psutil

from edgekit import __version__
from edgekit.backends.base import runtime_packages
from edgekit.host import cpu_name


@cache
def machine_info() -> dict:
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cores": os.cpu_count(),
        "memory_mb": round(psutil.virtual_memory().total / 2**20),
        "accelerators": accelerators(),
        "runtimes": runtimes(),
        "edgekit_version": __version__,
        "python": platform.python_version(),
    }


def runtimes() -> dict[str, str]:
    found = {}
    for dist, module in runtime_packages().items():
        try:
            if importlib.util.find_spec(module) is not None:
                found[dist] = importlib.metadata.version(dist)
        except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
            continue
    return found


def accelerators() -> list[str]:
    """Devices beyond the CPU that a runtime here could use, from what the OS shows."""
    found = []
    if shutil.which("nvidia-smi"):
        found.append("NVIDIA GPU (nvidia-smi)")
    if Path("/etc/nv_tegra_release").is_file():
        found.append("NVIDIA Jetson (L4T)")
    if Path("/dev/apex_0").exists():
        found.append("Coral Edge TPU (PCIe, /dev/apex_0)")
    if _usb_device({("1a6e", "089a"), ("18d1", "9302")}):
        found.append("Coral Edge TPU (USB)")
    if any(Path("/dev/accel").glob("accel*")):
        found.append("NPU (/dev/accel)")
    if any(Path("/dev/dri").glob("renderD*")):
        found.append("GPU render node (/dev/dri)")
    return found


def _usb_device(ids: set[tuple[str, str]]) -> bool:
    for device in Path("/sys/bus/usb/devices").glob("*"):
        try:
            pair = ((device / "idVendor").read_text().strip(), (device / "idProduct").read_text().strip())
        except OSError:
            continue
        if pair in ids:
            return True
    return False
