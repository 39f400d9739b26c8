"""What every benchmark shares: timing blocks of inferences, warming up, and saying the machine."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np

from edgekit.host import cpu_flags, cpu_name
from edgekit.report import versions
from edgekit.targets import load_target


def block(engine, feed, n: int) -> list[float]:
    """n timed inferences, ms each."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        engine.run(feed)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def warm_up(engine, feed, runs: int = 10, seconds: float = 0.5) -> None:
    block(engine, feed, runs)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        engine.run(feed)


def percentiles(times: list[float]) -> dict:
    t = np.asarray(times)
    p10, p50, p90, p99 = np.percentile(t, [10, 50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "spread_p90_p10": float(p90 - p10), "runs": len(t)}


def machine() -> dict:
    flags = cpu_flags()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags]
    host = load_target("host")
    return {"cpu": cpu_name(), "isa": isa, "cores": host.cores, "peak_gops": host.peak_gops,
            "date": dt.date.today().isoformat(), "versions": versions()}
