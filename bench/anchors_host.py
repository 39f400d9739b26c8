"""The anchored latency model (edgekit.anchored) tested where truth is measurable: on this machine (issue 15).

The published anchors of a Pi or a Jetson cannot be checked here, but the method can: on `host` (OpenVINO CPU,
fp32, batch 1, the host's threads) the same model is fitted on three reference architectures measured here —
MobileNet V1, MobileNet V2 and ResNet-50 at 224x224, the set the Raspberry Pi 4 and the Jetson Orin Nano are
anchored on, chosen before any measurement — and then predicts every other model edgekit has: the remaining
reference architectures (224 and 160), the zoo at 32 and 224, the demo, the example encoders and the PP-OCR
models of the real-model zoo. Each prediction is compared with its measured p50. Models with random weights
(the references, the encoders) are for latency only, as BENCH.md allows.

    .venv/bin/python bench/anchors_host.py [--threads N] [--rounds 10] [--seconds 3] [--reuse]

Writes bench/results/anchors_host.json and bench/results/anchors_host.md (--reuse: refit on the measurements
already in the JSON, measuring nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from common import block, machine, warm_up

from edgekit import anchored, graph, ocr_zoo, reference_models
from edgekit.backends.base import get_backend
from edgekit.models import load_model
from edgekit.plan import PrecisionPlan
from edgekit.targets import load_target

ANCHORS = ("mobilenet_v1@224", "mobilenet_v2@224", "resnet50@224")  # fixed before measuring: rpi4's set
REFERENCES = ("mobilenet_v1", "mobilenet_v2", "resnet18", "resnet34", "resnet50", "resnet50_v1", "inception_v1")
OTHERS = {  # label → (model spec or zoo name, input shapes)
    "zoo resnet@32": ("edgekit.zoo:resnet", None), "zoo mobilenet@32": ("edgekit.zoo:mobilenet", None),
    "zoo resnet@224": ("edgekit.zoo:resnet224", None), "zoo mobilenet@224": ("edgekit.zoo:mobilenet224", None),
    "demo (digits cnn)": (None, None), "encoder (examples/encoder.py)": ("examples.encoder:build", None),
    "encoder base (6x384, seq 64)": ("examples.encoder:build_base", None),
    "ppocr-cls (1x3x48x192)": ("ppocr-cls", ["x:1,3,48,192"]), "ppocr-det (1x3x320x320)": ("ppocr-det", ["x:1,3,320,320"]),
    "ppocr-rec (1x3x48x320)": ("ppocr-rec", ["x:1,3,48,320"]),
}


def _layers(label: str, work: Path):
    """(layers, onnx path, feed) of one model, exported as edgekit exports a user's."""
    if label.split("@")[0] in REFERENCES:
        key, size = label.split("@")
        spec, shapes = reference_models.spec(key), [f"1,3,{size},{size}"]
    else:
        spec, shapes = OTHERS[label]
    if spec in ocr_zoo.MODELS:
        spec = str(ocr_zoo.model_path(spec))
    model = load_model(spec, shapes)
    onnx_path = graph.export_onnx(model, work / "model.onnx")
    return graph.layer_table(onnx_path), onnx_path, dict(model.example)


def _engine(onnx_path: Path, threads: int, work: Path):
    host, backend = load_target("host"), get_backend("openvino")
    artifact = backend.build(onnx_path=onnx_path, plan=PrecisionPlan(), target=host, out_dir=work)
    return backend.load(artifact, target=host, threads=threads)


def measure_all(threads: int, rounds: int, seconds: float) -> list[dict]:
    """Every model's engine built, then all timed in interleaved rounds (a block of each per round, about
    `seconds` / `rounds` of it), so that load from the machine's other users hits every model alike."""
    labels = [f"{k}@{s}" for s in (224, 160) for k in REFERENCES] + list(OTHERS)
    rows, engines = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, label in enumerate(labels):
            work = Path(tmp) / str(i)
            work.mkdir()
            try:
                layers, onnx_path, feed = _layers(label, work)
                engines[label] = (_engine(onnx_path, threads, work), feed)
            except Exception as err:  # a model that does not load here is a row that says why
                rows[label] = {"model": label, "error": f"{type(err).__name__}: {str(err)[:200]}"}
                print(f"[{label}] skipped: {rows[label]['error']}", flush=True)
                continue
            rows[label] = {"model": label, "features": anchored.features(layers, load_target("host"), "fp32")}
        sizes = {}
        for label, (engine, feed) in engines.items():
            warm_up(engine, feed)
            start = time.perf_counter()
            block(engine, feed, 5)
            sizes[label] = max(3, int(seconds / rounds / ((time.perf_counter() - start) / 5)))
        times = {label: [] for label in engines}
        for _ in range(rounds):
            for label, (engine, feed) in engines.items():
                times[label] += block(engine, feed, sizes[label])
    for label, t in times.items():
        rows[label]["measured"] = {"p50": float(np.median(t)), "p90": float(np.percentile(t, 90)), "runs": len(t),
                                   "rounds": rounds}
        print(f"[{label}] p50 {rows[label]['measured']['p50']:.3f} ms, roofline "
              f"{rows[label]['features']['roofline_ms']:.3f} ms", flush=True)
    return [rows[label] for label in labels]


VARIANTS = {  # the library's form first, then the first form tried, then each with one more term
    "compute + memory efficiencies (2 parameters: edgekit.anchored)": ("compute_slowdown", "memory_slowdown"),
    "overhead + slowdown x roofline (2 parameters: the first form tried)": ("overhead_ms", "slowdown"),
    "compute + memory + per-inference overhead (3 parameters)": ("overhead_ms", "compute_slowdown", "memory_slowdown"),
    "compute + memory + per-layer overhead (3 parameters)": ("compute_slowdown", "memory_slowdown", "per_layer_ms"),
    "overhead + slowdown + per-layer overhead (3 parameters)": ("overhead_ms", "slowdown", "per_layer_ms"),
}


def _variant(terms: tuple[str, ...], anchors: list[dict], others: list[dict]) -> dict:
    feats, ms = [a["features"] for a in anchors], [a["measured"]["p50"] for a in anchors]
    params = anchored.solve(feats, ms, terms)
    loo = anchored.leave_one_out(feats, ms, terms)
    fit = anchored.Fit("host", "", terms, params, tuple(anchors), (), tuple(loo), float(np.median(np.abs(loo))),
                       anchored.interval_factor(loo), "largest leave-one-out error")
    rows = []
    for row in others:
        latency = anchored.predict_from_features(row["features"], fit)
        measured = row["measured"]["p50"]
        rows.append({"model": row["model"], "group": row["group"], "measured_p50": measured, "predicted": latency.p50,
                     "low": latency.low, "high": latency.high, "error": latency.p50 / measured - 1,
                     "inside": latency.low <= measured <= latency.high,
                     "roofline_ms": row["features"]["roofline_ms"]})
    errors = np.abs([r["error"] for r in rows])
    groups = {g: [r for r in rows if r["group"] == g] for g in dict.fromkeys(r["group"] for r in rows)}
    return {"terms": terms, "params": params, "loo_errors": loo, "interval_factor": fit.interval_factor,
            "rule": _rule_sensitivity(fit, others),
            "median_abs_error": float(np.median(errors)), "inside": float(np.mean([r["inside"] for r in rows])),
            "by_group": {g: {"n": len(rs), "median_abs_error": float(np.median(np.abs([r["error"] for r in rs]))),
                             "inside": float(np.mean([r["inside"] for r in rs]))} for g, rs in groups.items()},
            "predictions": rows}


def _rule_sensitivity(fit, others: list[dict]) -> list[dict]:
    """The share inside the interval under neighbouring choices of the bound's two constants (its floor and its
    growth per decade outside the anchors; edgekit's: anchored.MIN_FACTOR, anchored.GROWTH_PER_DECADE), chosen
    on these same models: how much the coverage owes to the exact choice."""
    worst = max(abs(math.log(max(1 + e, 1e-9))) for e in fit.loo_errors)
    out = []
    for floor in (1.1, 1.25):
        for growth in (1.0, 1.5, 2.0, 3.0):
            inside = []
            for row in others:
                value = anchored.model_ms(fit.params, row["features"])
                factor = max(floor, math.exp(worst)) * growth ** anchored.outside(fit, row["features"])
                inside.append(value / factor <= row["measured"]["p50"] <= value * factor)
            out.append({"floor": floor, "growth_per_decade": growth, "inside": float(np.mean(inside))})
    return out


def _group(label: str) -> str:
    if label in ANCHORS:
        return "anchor"
    if label.split("@")[0] in REFERENCES:
        return "reference architectures (not in the fit)"
    return "edgekit's other models (zoo, demo, encoders, PP-OCR)"


def evaluate(here: dict, threads: int, rows: list[dict]) -> dict:
    measured = [{**r, "group": _group(r["model"])} for r in rows if "measured" in r]
    anchors = [r for r in measured if r["group"] == "anchor"]
    others = [r for r in measured if r["group"] != "anchor"]
    return {"machine": here, "threads": threads, "anchors": list(ANCHORS), "models": rows,
            "skipped": [r for r in rows if "error" in r],
            "variants": {name: _variant(terms, anchors, others) for name, terms in VARIANTS.items()}}


def to_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# The anchored latency model tested on this machine (issue 15), {m['date']}", "",
             f"Machine: {m['cpu']}, ISA {', '.join(m['isa'])}, {m['cores']} cores, {report['threads']} threads; "
             f"OpenVINO {m['versions'].get('openvino')} CPU, fp32, batch 1; measured peak fp32 "
             f"{m['peak_gops']['fp32']} GOPS. Fitted on {', '.join(report['anchors'])} (measured here), every other "
             f"model predicted and measured (p50 over interleaved rounds: a block of each model per round, about 3 s per model in all). Error = predicted / measured - 1; "
             f"inside = measured within the stated interval (p50 ÷ f to p50 × f, f the largest leave-one-out error, "
             f"at least {anchored.MIN_FACTOR}, times {anchored.GROWTH_PER_DECADE:g} per decade the model lies outside the "
             f"anchors in size and in memory/compute mix: edgekit.anchored).", ""]
    for r in report["skipped"]:
        lines.append(f"Not measured: {r['model']}: {r['error']}")
    lines += ["", "| form | parameters | LOO errors (anchors) | f | median abs error | inside | by group |",
              "|---|---|---|---|---|---|---|"]
    for name, v in report["variants"].items():
        params = ", ".join(f"{k} {p:.4g}" for k, p in v["params"].items())
        groups = "; ".join(f"{g}: {s['median_abs_error']:.0%}, {s['inside']:.0%} inside (n={s['n']})"
                           for g, s in v["by_group"].items())
        lines.append(f"| {name} | {params} | {', '.join(f'{e:+.0%}' for e in v['loo_errors'])} | "
                     f"{v['interval_factor']:.2f} | {v['median_abs_error']:.0%} | {v['inside']:.0%} | {groups} |")
    first = next(iter(report["variants"]))
    lines += ["", f"The bound's two constants, chosen on these models: the share inside under neighbouring choices "
                  f"({first}; edgekit: floor {anchored.MIN_FACTOR}, growth {anchored.GROWTH_PER_DECADE:g}; growth 1 is "
                  f"no widening outside the anchors):", "",
              "| floor | growth per decade outside | inside |", "|---|---|---|"]
    lines += [f"| {r['floor']} | {r['growth_per_decade']:g} | {r['inside']:.0%} |" for r in report["variants"][first]["rule"]]
    lines += ["", f"Per model ({first}):", "",
              "| model | roofline (ms) | predicted (ms) | low - high (ms) | measured p50 (ms) | error | inside |",
              "|---|---|---|---|---|---|---|"]
    for r in report["variants"][first]["predictions"]:
        lines.append(f"| {r['model']} | {r['roofline_ms']:.3f} | {r['predicted']:.3f} | {r['low']:.3f} - "
                     f"{r['high']:.3f} | {r['measured_p50']:.3f} | {r['error']:+.0%} | {'yes' if r['inside'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="0: the host's cores (the host target's figure)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model, over all rounds")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (a block of each model per round)")
    parser.add_argument("--reuse", action="store_true", help="refit on the measurements in the JSON")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    threads = args.threads or load_target("host").cores
    path = args.out / "anchors_host.json"
    if args.reuse:
        previous = json.loads(path.read_text())
        here, rows = previous["machine"], previous["models"]
    else:
        here = machine()
        print(f"{here['cpu']} ({', '.join(here['isa'])}), {here['cores']} cores, {threads} threads, OpenVINO "
              f"{here['versions'].get('openvino')}", flush=True)
        rows = measure_all(threads, args.rounds, args.seconds)
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"machine": here, "threads": threads, "models": rows}, indent=1) + "\n")
    report = evaluate(here, threads, rows)
    path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    (args.out / "anchors_host.md").write_text(to_markdown(report))
    print(to_markdown(report))


if __name__ == "__main__":
    main()
