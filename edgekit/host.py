"""The `host` target's figures, taken from this machine rather than a datasheet.

ISA, cores and memory are read at run time; the peak fp32 and int8 rates are measured once with a
large MatMul in OpenVINO (the host's runtime) and cached per CPU model and OpenVINO version, because
a datasheet cannot say what a shared or virtualised CPU really delivers.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from functools import cache
from pathlib import Path

import numpy as np
import psutil

from edgekit.util import cache_dir, write_json

ISA_FLAGS = {  # /proc/cpuinfo flag → the name users know
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "asimddp": "DOTPROD",
    "i8mm": "I8MM",
}
MATMUL_SIZE = 1024


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_vnni(isa: tuple[str, ...]) -> bool:
    return any(name in isa for name in ("AVX512-VNNI", "AVX-VNNI", "AMX-INT8", "DOTPROD"))


def _matmul_onnx(precision: str) -> bytes:
    """A square MatMul as ONNX; the int8 one is Q/DQ so OpenVINO runs it with int8 kernels."""
    from onnx import TensorProto, helper, numpy_helper

    n = MATMUL_SIZE
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
    if precision == "fp32":
        w = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "w")
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [w]
    else:
        inits = [
            numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "wq"),
            numpy_helper.from_array(np.array(0.01, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.uint8), "zx"),
            numpy_helper.from_array(np.array(0, np.int8), "zw"),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "s", "zx"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "zx"], ["xd"]),
            helper.make_node("DequantizeLinear", ["wq", "s", "zw"], ["wd"]),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ]
    graph = helper.make_graph(nodes, f"peak_{precision}", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def measure_peak_gops(precision: str, seconds: float = 1.0) -> float:
    """Giga-ops/s of a large MatMul in OpenVINO on all cores: the practical peak for this runtime."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(_matmul_onnx(precision), b"")
    compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    x = np.random.default_rng(1).random((MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32)
    for _ in range(3):
        request.infer({0: x})
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < deadline:
        start = time.perf_counter()
        request.infer({0: x})
        times.append(time.perf_counter() - start)
    return 2 * MATMUL_SIZE**3 / float(np.median(times)) / 1e9


def _peak_cache_path(name: str, ov_version: str) -> Path:
    key = "".join(c if c.isalnum() else "-" for c in f"{name}-{ov_version}")
    return cache_dir() / "host-peaks" / f"{key}.json"


def measured_peaks() -> dict:
    """Peak fp32/int8 rates of this CPU in OpenVINO, measured once and cached."""
    import openvino as ov

    path = _peak_cache_path(cpu_name(), ov.get_version())
    if path.is_file():
        return json.loads(path.read_text())
    peaks = {
        "peak_gops": {p: round(measure_peak_gops(p), 1) for p in ("fp32", "int8")},
        "measured_on": dt.date.today().isoformat(),
        "openvino": ov.get_version(),
        "matmul": f"{MATMUL_SIZE}x{MATMUL_SIZE}x{MATMUL_SIZE}",
    }
    write_json(path, peaks)
    return peaks


@cache
def detect_host_figures() -> dict:
    """The figures of the `host` target, with a source for each."""
    flags = cpu_flags()
    isa = tuple(sorted({label for flag, label in ISA_FLAGS.items() if flag in flags}))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ram_mb = psutil.virtual_memory().total / 2**20
    storage_mb = psutil.disk_usage(str(cache_dir())).free / 2**20
    peaks = measured_peaks()
    vnni = has_vnni(isa)
    when = peaks["measured_on"]
    return {
        "device": cpu_name(),
        "isa": list(isa),
        "cores": cores,
        "ram_mb": round(ram_mb),
        "storage_mb": round(storage_mb),
        "peak_gops": peaks["peak_gops"],
        # Without VNNI/AMX int8 has no dedicated dot-product instruction: measure before choosing it.
        "precisions": {"supported": ["fp32", "int8"], "fast": ["fp32", "int8"] if vnni else ["fp32"]},
        # x86 without VNNI: vpmaddubsw saturates int16 pair sums of u8 x s8 products; 7-bit weights cannot.
        "quantization": {"weight_bits": 8 if vnni or not any(f in isa for f in ("AVX2", "AVX-512")) else 7},
        # Bandwidth is not measured yet; a DDR4 dual-channel figure is the conservative assumption.
        "memory_bandwidth_gbs": 20.0,
        "sources": {
            "peak_gops.fp32": f"measured here on {when}: {peaks['matmul']} MatMul in OpenVINO {peaks['openvino']}",
            "peak_gops.int8": f"measured here on {when}: {peaks['matmul']} Q/DQ MatMul in OpenVINO {peaks['openvino']}",
            "memory_bandwidth_gbs": "assumed: dual-channel DDR4-2666 (not measured on this machine)",
            "ram_mb": "detected at run time (psutil)",
            "storage_mb": "detected at run time: free space of the cache folder's disk",
            "cores": "detected at run time (CPU affinity of this process)",
            "alignment": "AVX2 register width: 8 fp32 lanes, 32 int8 lanes (16 with VNNI-less u8s8 paths)",
            "isa": "detected at run time (/proc/cpuinfo flags)",
            "quantization.weight_bits": "derived from the ISA: 7 on x86 without VNNI (int16 saturation of vpmaddubsw), else 8",
        },
    }
