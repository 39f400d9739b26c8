"""fp32 OpenVINO vs fp32 ONNX Runtime on the same models, side by side in one run (../shared/BENCH.md).

Both engines are built by edgekit's backends from the same ONNX file and timed interleaved: each
round times a block of inferences on A, then on B, and records B/A. Reports p50/p90/p99 per engine,
the per-round ratio (median, min, max), and each engine's p50 against the roofline floor computed
from the model's MACs and bytes and this machine's measured peak.

    .venv/bin/python bench/runtimes.py [--rounds 40] [--block 50] [--threads 2]

Writes bench/results/runtimes.json and bench/results/runtimes.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import block as _block
from common import run_models, timing_args, warm_up

from edgekit import graph, roofline
from edgekit.backends.base import get_backend
from edgekit.data import demo_data, load_data
from edgekit.models import load_model
from edgekit.plan import PrecisionPlan
from edgekit.targets import load_target

MODELS = {  # name → (model spec, data spec or None for the demo's own data)
    "digits-cnn (demo)": (None, None),
    "tiny-encoder (random weights, latency only)": ("examples.encoder:build", "examples.encoder:data"),
}
ENGINES = ("openvino", "onnxruntime")


def bench_model(label: str, spec: str | None, data: str | None, args, work: Path) -> dict:
    host = load_target("host")
    model = load_model(spec)
    samples = load_data(data, model.inputs) if data else demo_data(model.inputs)
    feed = samples.sample(0)
    onnx_path = graph.export_onnx(model, work / f"{model.name}.onnx")
    layers = graph.layer_table(onnx_path)
    floor = roofline.predict_latency(layers, host, "fp32").p50
    engines = {}
    for name in ENGINES:
        backend = get_backend(name)
        out = work / f"{model.name}-{name}"
        out.mkdir()
        artifact = backend.build(onnx_path=onnx_path, plan=PrecisionPlan(), target=host, out_dir=out)
        engines[name] = backend.load(artifact, target=host, threads=args.threads)
    for engine in engines.values():  # warm-up: ≥10 runs and ≥0.5 s each
        warm_up(engine, feed)
    times = {name: [] for name in ENGINES}
    ratios = []
    for _ in range(args.rounds):  # A B A B ...: drift on a shared machine hits both alike
        block = {name: _block(engines[name], feed, args.block) for name in ENGINES}
        for name in ENGINES:
            times[name] += block[name]
        ratios.append(float(np.median(block["onnxruntime"]) / np.median(block["openvino"])))
    result = {"model": label, "macs": graph.totals(layers)["macs"], "roofline_floor_ms": floor,
              "ratio_onnxruntime_over_openvino": {"median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios)}}
    for name in ENGINES:
        t = np.asarray(times[name])
        p50, p90, p99 = np.percentile(t, [50, 90, 99])
        result[name] = {"p50": p50, "p90": p90, "p99": p99, "spread_p90_p10": float(np.percentile(t, 90) - np.percentile(t, 10)),
                        "runs": len(t), "p50_over_floor": p50 / floor}
    return result


def to_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# fp32 OpenVINO vs ONNX Runtime, {m['date']}",
        "",
        f"Machine: {m['cpu']}, ISA {', '.join(m['isa'])}, {m['cores']} cores, threads {report['threads']}; "
        f"measured peak fp32 {m['peak_gops']['fp32']} GOPS (OpenVINO MatMul). "
        f"OpenVINO {m['versions'].get('openvino')}, ONNX Runtime {m['versions'].get('onnxruntime')}. "
        f"{report['rounds']} interleaved rounds × {report['block']} inferences per engine, batch 1. All latencies measured.",
        "",
        "| model | MACs | OpenVINO p50 / p90 / p99 (ms) | ONNX Runtime p50 / p90 / p99 (ms) | ORT / OV per round: median (min–max) | p50 / roofline floor (OV, ORT) |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        ov, ort = r["openvino"], r["onnxruntime"]
        ratio = r["ratio_onnxruntime_over_openvino"]
        lines.append(
            f"| {r['model']} | {r['macs'] / 1e6:.2f} M | {ov['p50']:.4f} / {ov['p90']:.4f} / {ov['p99']:.4f} | "
            f"{ort['p50']:.4f} / {ort['p90']:.4f} / {ort['p99']:.4f} | {ratio['median']:.2f} ({ratio['min']:.2f}–{ratio['max']:.2f}) | "
            f"{ov['p50_over_floor']:.1f}×, {ort['p50_over_floor']:.1f}× |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    timing_args(parser)
    run_models("runtimes", MODELS, lambda label, pair, args, work: bench_model(label, *pair, args, work), to_markdown,
               parser.parse_args())


if __name__ == "__main__":
    main()
