"""TensorRT's own calibration files: the calibration cache and a per-layer precision list.

The cache is the text TensorRT's calibrators write and read back (`trtexec --int8 --calib=FILE`):
a header `TRT-<version>-<Algorithm>`, then one `tensor: <scale>` line per tensor, the scale
(amax / 127, symmetric int8) as the big-endian hex of its float32 bits. TensorRT numbers its
versions as major*1000+minor*100+patch before 10 (8.6.1 → 8601) and major*10000+minor*100+patch
from 10 on (10.3.0 → 100300). Layers without a scale stay in float.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from edgekit.errors import BadInput
from edgekit.util import atomic_write_text

ALGORITHMS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration",
              "percentile": "EntropyCalibration2", "mse": "EntropyCalibration2"}
HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
LINE = re.compile(r"^(.+): ([0-9a-f]{8})$")


def version_code(version: str) -> int:
    try:
        major, minor, patch = (int(p) for p in (version.split(".") + ["0", "0"])[:3])
    except ValueError as err:
        raise BadInput(f"TensorRT version '{version}' is not MAJOR.MINOR[.PATCH]") from err
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def scale_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def write_cache(path: Path, scales: dict[str, float], *, version: str, algorithm: str) -> None:
    """Write a TensorRT calibration cache; `algorithm` is one of TensorRT's calibrator names."""
    lines = [f"TRT-{version_code(version)}-{algorithm}"]
    lines += [f"{name}: {scale_hex(scale)}" for name, scale in scales.items()]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def read_cache(path: Path) -> tuple[int, str, dict[str, float]]:
    """(version code, algorithm, {tensor: scale}) of a TensorRT calibration cache."""
    text = Path(path).read_text().splitlines()
    if not text or not (header := HEADER.match(text[0].strip())):
        raise BadInput(f"{path}: not a TensorRT calibration cache (first line should be TRT-<version>-<Algorithm>)")
    scales = {}
    for number, line in enumerate(text[1:], start=2):
        if not line.strip():
            continue
        match = LINE.match(line.strip())
        if not match:
            raise BadInput(f"{path}:{number}: expected 'tensor: <8 hex digits>', got '{line.strip()[:80]}'")
        scales[match.group(1)] = struct.unpack(">f", bytes.fromhex(match.group(2)))[0]
    return int(header.group(1)), header.group(2), scales


def layer_precisions(planned: dict[str, str]) -> str:
    """The argument of `trtexec --layerPrecisions` (used with --precisionConstraints=obey)."""
    return ",".join(f"{layer}:{precision}" for layer, precision in planned.items())
