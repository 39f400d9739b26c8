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


def int8_isa(machine: dict) -> str:
    """What int8 runs on here, from the CPU's flags (never assumed): AMX, VNNI, or AVX2 without either."""
    isa = machine["isa"]
    found = [f for f in isa if "vnni" in f or f.startswith("amx")]
    return f"int8 with {', '.join(found)}" if found else "no VNNI or AMX: int8 uses AVX2" if "avx2" in isa else "no AVX2"


def timing_args(parser) -> None:
    """The options every benchmark shares: interleaved rounds, block size, threads, model filter, output."""
    from pathlib import Path

    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="Run only the models whose label contains this.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")


def run_models(name: str, models: dict, bench_model, to_markdown, args) -> dict:
    """Bench every model (each in its own temporary folder), then write NAME.json and NAME.md."""
    import json
    import tempfile
    from pathlib import Path

    results = []
    here = machine()
    for label, spec in models.items():
        if args.only not in label:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            results.append({**bench_model(label, spec, args, Path(tmp)), "machine": here})
    previous = args.out / f"{name}.json"
    if args.only and previous.is_file():  # --only: the other models' sections stay as their own runs measured them
        ran, last = {r["model"] for r in results}, json.loads(previous.read_text())
        kept = [{"machine": last["machine"], **r} for r in last["results"] if r["model"] not in ran]  # their own run's date
        results = [r for label in models for r in kept + results if r["model"] == label]
    report = {"machine": here, "threads": args.threads, "rounds": args.rounds, "block": args.block, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (args.out / f"{name}.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return report


def interleaved(engines: dict, feed, rounds: int, block_size: int) -> tuple[dict, dict]:
    """Every engine warmed up, then timed in turn (fp32, A, B, … per round, so drift on a shared machine
    hits all alike): all times per engine, and each engine's per-round p50 ratio to the "fp32" engine."""
    for engine in engines.values():
        warm_up(engine, feed)
    times = {name: [] for name in engines}
    ratios = {name: [] for name in engines if name != "fp32"}
    for _ in range(rounds):
        medians = {}
        for name, engine in engines.items():
            t = block(engine, feed, block_size)
            times[name] += t
            medians[name] = float(np.median(t))
        for name in ratios:
            ratios[name].append(medians[name] / medians["fp32"])
    return times, ratios
