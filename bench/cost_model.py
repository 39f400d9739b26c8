"""The latency cost model against measurements: predicted vs measured whole-model p50 on many
candidates (precision plans and widths), OpenVINO (or ONNX Runtime) on this machine (../shared/BENCH.md).

Candidates: the demo, the zoo's ResNet-like and MobileNetV2-like (trained), and the same two
architectures rebuilt at other widths, some with channel counts no multiple of 8, as pruning leaves
them (random weights: latency only); each all-fp32, all-int8 and in random per-layer int8 mixes
(`CalibrationResult.rewrite`). The cost model predicts each from a fresh lookup table, filled
here (timed per model). Every candidate is then built with edgekit's backend and all are
timed interleaved: in each round every candidate runs a slice, in a fresh random order, so the slow
and fast spells of this shared virtual machine (its 2-thread speed swings by up to 2x over minutes)
hit all alike; measured = p50 over all rounds. The calibration is fitted on a random half of the
candidates (`CostModel.observe`, which records each one's error before it is observed: the online
error a search reports) and judged on the other half (`CostModel.error`); then, offline with the same
fit, on 200 more random halves, and one model at a time (3 of its candidates observed, 3 judged), as
a search of one model uses it. The measurement's own noise: how far apart the p50s of the odd and the
even rounds of one candidate are.

    .venv/bin/python bench/cost_model.py [--mixes 4] [--rounds 12] [--seconds 2.4] [--seed 0] [--backend openvino]

Writes bench/results/cost_model.json and bench/results/cost_model.md (cost_model-onnxruntime.* with
--backend onnxruntime).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import machine

from edgekit import cost, graph
from edgekit.backends.base import get_backend
from edgekit.calibrate.run import CalibrationOptions, calibrate
from edgekit.data import load_data, split
from edgekit.latency_table import LatencyTable
from edgekit.models import InputSpec, LoadedModel, load_model
from edgekit.plan import PrecisionPlan
from edgekit.profile import ProfileSettings, time_engine
from edgekit.targets import load_target
from edgekit.unit_timing import wait_for_quiet

RESULTS = Path(__file__).parent / "results"
QUIET_S = 20.0  # before each measurement round, wait up to this long for other jobs to calm down
QUIET_TABLE_S = 2.0  # and before each table entry


def resnet_like(widths: tuple[int, int, int]):
    import torch.nn as nn

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))

    a, b, c = widths
    return nn.Sequential(nn.Conv2d(1, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(),
                         Basic(a, a, 1), Basic(a, b, 2), Basic(b, c, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def mobilenet_like(scale: float):
    import torch.nn as nn

    def ch(c: int) -> int:
        return max(4, int(round(c * scale)))

    def conv_bn(cin, cout, k, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + [nn.ReLU6()] if act else layers

    class IR(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            layers = conv_bn(cin, hidden, 1) if expand != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden) + conv_bn(hidden, cout, 1, act=False)
            self.block, self.residual = nn.Sequential(*layers), stride == 1 and cin == cout

        def forward(self, x):
            return x + self.block(x) if self.residual else self.block(x)

    c16, c24, c32, c64 = ch(16), ch(24), ch(32), ch(64)
    return nn.Sequential(*conv_bn(1, c16, 3), IR(c16, c16, 1, 1), IR(c16, c24, 2, 6), IR(c24, c24, 1, 6),
                         IR(c24, c32, 2, 6), IR(c32, c32, 1, 6), IR(c32, c64, 1, 6), *conv_bn(c64, ch(256), 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch(256), 10))


def _random_weights(name: str, module) -> LoadedModel:
    """A torch module with seeded random weights and BN statistics (latency only) as a LoadedModel."""
    import torch

    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    module.eval()
    example = {"input": np.zeros((1, 1, 32, 32), np.float32)}
    return LoadedModel(name, "torch", (InputSpec("input", (1, 1, 32, 32), "float32"),), example, name, module=module)


MODELS = {  # label → (loader, data spec, trained)
    "demo": (lambda: load_model(None), "edgekit.demo:data", True),
    "resnet-like": (lambda: load_model("edgekit.zoo:resnet"), "edgekit.zoo:data", True),
    "mobilenetv2-like": (lambda: load_model("edgekit.zoo:mobilenet"), "edgekit.zoo:data", True),
    "resnet-like 16/32/64": (lambda: _random_weights("resnet-16", resnet_like((16, 32, 64))), "edgekit.zoo:data", False),
    "resnet-like 20/44/100": (lambda: _random_weights("resnet-20", resnet_like((20, 44, 100))), "edgekit.zoo:data", False),
    "resnet-like 48/96/192": (lambda: _random_weights("resnet-48", resnet_like((48, 96, 192))), "edgekit.zoo:data", False),
    "mobilenetv2-like ×0.5": (lambda: _random_weights("mobilenet-0.5", mobilenet_like(0.5)), "edgekit.zoo:data", False),
    "mobilenetv2-like ×0.7": (lambda: _random_weights("mobilenet-0.7", mobilenet_like(0.7)), "edgekit.zoo:data", False),
}


def candidates(label: str, layers, result, mixes: int, rng: random.Random) -> dict[str, dict[str, str]]:
    quantizable = list(result.int8_layers)
    plans = {f"{label} | fp32": {}, f"{label} | int8": {n: "int8" for n in quantizable}}
    for i in range(mixes):
        share = (i + 1) / (mixes + 1)
        chosen = []
        while not 0 < len(chosen) < len(quantizable):  # a real mix: some int8, some fp32
            chosen = [n for n in quantizable if rng.random() < share]
        plans[f"{label} | mix {i + 1} ({len(chosen)}/{len(quantizable)} int8)"] = {n: "int8" for n in chosen}
    return plans


def measure_interleaved(engines: dict, feeds: dict, rounds: int, seconds: float, rng: random.Random):
    """Every candidate timed in every round, for seconds/rounds each, in a fresh random order each round:
    the machine's slow and fast spells hit every candidate alike. Returns every time per candidate,
    the median per round, and how many rounds started with the machine quiet."""
    settings = ProfileSettings(warmup=3, warmup_s=0.0, repeats=10, min_time_s=seconds / rounds)
    for name, engine in engines.items():
        time_engine(engine, feeds[name], replace(settings, warmup=10, warmup_s=0.1, repeats=1, min_time_s=0.0))
    medians: dict[str, list[float]] = {name: [] for name in engines}
    times: dict[str, list[float]] = {name: [] for name in engines}
    order = list(engines)
    quiet = 0
    for _ in range(rounds):
        quiet += wait_for_quiet(QUIET_S)
        rng.shuffle(order)
        for name in order:
            t = time_engine(engines[name], feeds[name], settings)
            medians[name].append(float(np.median(t)))
            times[name] += t
    return times, medians, quiet


def _fitted_mae(rows: list[dict], fit: list[int], judge: list[int], prior) -> float:
    coef = cost.fit_calibration([{"features": rows[i]["features"], "measured_ms": rows[i]["measured_ms"]} for i in fit], prior)
    return float(np.mean([abs(np.dot(coef, [rows[i]["features"][f] for f in cost.FEATURES]) / rows[i]["measured_ms"] - 1)
                          for i in judge]))


def fill_time(host, backend: str, work: Path) -> dict:
    """The ResNet-like's table from empty, all fp32 and all int8, without waiting for a quiet machine."""
    layers = graph.layer_table(graph.export_onnx(load_model("edgekit.zoo:resnet"), work / "fill-resnet.onnx"))
    quantizable = [layer.name for layer in layers if layer.op in ("Conv", "Gemm")]
    table = LatencyTable(host, backend, path=work / "fill-resnet.json")
    start = time.perf_counter()
    model = cost.CostModel(host, backend, table=table)  # measures the runtime's overheads
    model.predict(layers)
    model.predict(layers, dict.fromkeys(quantizable, "int8"))
    return {"seconds": round(time.perf_counter() - start, 1), "units": table.measurements}


def bench(args, work: Path) -> dict:
    host = load_target("host")
    backend = get_backend(args.backend)
    rng = random.Random(args.seed)
    fill_resnet = fill_time(host, args.backend, work)
    table = LatencyTable(host, args.backend, path=work / "table.json", quiet_s=QUIET_TABLE_S)
    model = cost.CostModel(host, args.backend, table=table)
    rows, fill, engines, feeds = [], {}, {}, {}
    for label, (load, data, trained) in MODELS.items():
        loaded = load()
        d = work / label.replace(" ", "_").replace("/", "-")
        d.mkdir()
        onnx_path = graph.export_onnx(loaded, d / "model.onnx")
        layers = graph.layer_table(onnx_path)
        samples = split(load_data(data, loaded.inputs))
        result = calibrate(onnx_path, samples.calibration, host, PrecisionPlan("int8"), d,
                           CalibrationOptions(method="minmax", equalization="off", samples=32))
        plans = candidates(label, layers, result, args.mixes, rng)
        start, before = time.perf_counter(), table.measurements
        predicted = {name: model.predict_ms(layers, plan) for name, plan in plans.items()}
        fill[label] = {"seconds": round(time.perf_counter() - start, 1), "measured": table.measurements - before}
        for i, (name, plan) in enumerate(plans.items()):
            out = d / f"c{i}"
            out.mkdir()
            source = onnx_path
            if plan:
                source = out / "model.int8.onnx"
                result.rewrite(sorted(plan), source)
            artifact = backend.build(onnx_path=source, plan=PrecisionPlan("fp32", plan), target=host, out_dir=out)
            engines[name] = backend.load(artifact, target=host, threads=host.cores)
            feeds[name] = samples.test.sample(0)
            rows.append({"candidate": name, "model": label, "trained": trained, "plan": plan, "int8_layers": len(plan),
                         "predicted_prior_ms": predicted[name], "features": model.features(layers, plan), "layers": layers})
        print(f"{label}: {len(plans)} candidates, table {fill[label]}", flush=True)
    times, medians, quiet = measure_interleaved(engines, feeds, args.rounds, args.seconds, rng)
    for r in rows:
        rounds = medians[r["candidate"]]
        r["measured_ms"] = float(np.median(times[r["candidate"]]))
        r["error_prior"] = r["predicted_prior_ms"] / r["measured_ms"] - 1
        r["noise"] = abs(np.median(rounds[0::2]) - np.median(rounds[1::2])) / r["measured_ms"]
        print(f"{r['candidate']}: measured {r['measured_ms']:.3f}, predicted {r['predicted_prior_ms']:.3f}", flush=True)
    # The API as a search uses it: observe half (each predicted before its measurement is known: the
    # online error a search reports), then judge the other half.
    order = list(range(len(rows)))
    rng.shuffle(order)
    fit, held = order[: len(order) // 2], order[len(order) // 2:]
    for i in fit:
        model.observe(rows[i]["layers"], rows[i]["plan"], rows[i]["measured_ms"], candidate=rows[i]["candidate"])
    online = model.errors()
    for i in held:
        rows[i]["error_calibrated"] = model.error(rows[i]["layers"], rows[i]["plan"], rows[i]["measured_ms"],
                                                  candidate=rows[i]["candidate"])
    # Offline, with the same fitting routine: 200 more random halves; and per model, as a search of
    # one model sees it: 3 of its candidates observed, its other 3 judged (every split of 6).
    prior = model.prior()
    halves = []
    for _ in range(200):
        rng.shuffle(order)
        halves.append(_fitted_mae(rows, order[: len(order) // 2], order[len(order) // 2:], prior))
    per_model = {}
    for label in MODELS:
        mine = [i for i, r in enumerate(rows) if r["model"] == label]
        splits = [list(c) for c in itertools.combinations(mine, len(mine) // 2)]
        per_model[label] = float(np.mean([_fitted_mae(rows, a, [i for i in mine if i not in a], prior) for a in splits]))
    for r in rows:
        r.pop("layers")
    return {"machine": machine(), "args": vars(args), "runtime": f"{table.runtime} {table.version}",
            "table": {"entries": len(table.entries), "overhead": table.overhead, "fill": fill, "source": table.source,
                      "fill_resnet": fill_resnet},
            "calibration": model.calibration, "rows": rows, "fit": [rows[i]["candidate"] for i in fit],
            "held_out_mae": float(np.mean([abs(rows[i]["error_calibrated"]) for i in held])),
            "online_errors": online[: len(fit)], "online_mae": float(np.mean([abs(e["error"]) for e in online[: len(fit)]])),
            "prior_mae": float(np.mean([abs(r["error_prior"]) for r in rows])),
            "split_mae": {"median": float(np.median(halves)), "p10": float(np.percentile(halves, 10)),
                          "p90": float(np.percentile(halves, 90))},
            "per_model_mae": per_model,
            "noise_floor": float(np.mean([r["noise"] for r in rows])), "quiet_rounds": f"{quiet}/{args.rounds}"}


def markdown(res: dict) -> str:
    m = res["machine"]
    n = len(res["rows"])
    lines = [f"# Latency cost model vs measurements ({res['args']['backend']}), {m['date']}", "",
             f"Machine: {m['cpu']}, ISA {', '.join(m['isa'])}, {m['cores']} cores, threads {m['cores']}; "
             f"{res['runtime']}. A shared virtual machine: other jobs ran meanwhile, and its 2-thread speed swings by "
             f"up to 2x over minutes. Each candidate built with edgekit's {res['args']['backend']} backend; all {n} timed "
             f"interleaved ({res['args']['rounds']} rounds in random order, ≥{res['args']['seconds']} s each in all); "
             f"measured = p50. Before each round the script waits up to {QUIET_S:.0f} s (each table entry {QUIET_TABLE_S:.0f} s) "
             f"for the machine's other load to fall below 25 % (rounds that started quiet: {res['quiet_rounds']}).", "",
             "## Mean absolute relative error of the predicted latency", "",
             "| how the cost model was used | MAE |", "|---|---|",
             f"| lookup table + measured runtime overheads, no whole-model calibration (all {n} candidates) | {res['prior_mae']:.1%} |",
             f"| online, as a search reports it: each of {len(res['fit'])} candidates predicted, then observed (`observe`) | "
             f"{res['online_mae']:.1%} |",
             f"| **calibrated on those {len(res['fit'])}, judged on the other {n - len(res['fit'])}** (`error`) | "
             f"**{res['held_out_mae']:.1%}** |",
             f"| same, 200 more random halves: median (p10–p90) | {res['split_mae']['median']:.1%} "
             f"({res['split_mae']['p10']:.1%}–{res['split_mae']['p90']:.1%}) |",
             "| one model at a time: calibrated on 3 of its candidates, judged on its other 3 (all splits) | "
             f"{np.mean(list(res['per_model_mae'].values())):.1%} |",
             f"| measurement noise: p50 of the odd vs the even rounds of one candidate | {res['noise_floor']:.1%} |", "",
             "Per model, calibrated on 3 of its candidates: " + ", ".join(f"{k} {v:.1%}" for k, v in res["per_model_mae"].items()) + ".", "",
             f"Calibration on the {len(res['fit'])}: {res['calibration']['coefficients']} (measured ≈ a·Σ float unit times + "
             "a₈·Σ int8 unit times + b·units + e·tensors crossing int8↔float + d·their M elements + c). a far from 1 means the table was "
             "filled in another spell of the machine than the one the candidates were timed in: the uncalibrated "
             "error above is mostly that, which the calibration takes out. "
             f"Table: {res['table']['entries']} unit configurations; runtime overheads {res['table']['overhead']} ms.", "",
             f"Time to fill the table for the ResNet-like (all fp32 and all int8, from empty, no waiting): "
             f"{res['table']['fill_resnet']['units']} units in {res['table']['fill_resnet']['seconds']} s. "
             "Per model in the run below (later models reuse entries; includes the waits for a quiet machine):", ""]
    lines += [f"- {k}: {v['measured']} units, {v['seconds']} s" for k, v in res["table"]["fill"].items()]
    lines += ["", "## Every candidate", "",
              "| candidate | int8 layers | measured p50 (ms) | predicted, table only (ms) | error | calibrated error (held-out) |",
              "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        cal = f"{r['error_calibrated']:+.1%}" if "error_calibrated" in r else "(observed)"
        lines.append(f"| {r['candidate']}{'' if r['trained'] else ' (random weights)'} | {r['int8_layers']} | "
                     f"{r['measured_ms']:.3f} | {r['predicted_prior_ms']:.3f} | {r['error_prior']:+.1%} | {cal} |")
    lines += ["", f"Reproduce: `.venv/bin/python bench/cost_model.py{'' if res['args']['backend'] == 'openvino' else ' --backend ' + res['args']['backend']}`"
              " (writes this file and the .json beside it).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixes", type=int, default=4, help="random int8 mixes per model")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=2.4, help="timed seconds per candidate, over all rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="openvino", choices=("openvino", "onnxruntime"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-cost-") as work:
        res = bench(args, Path(work))
    RESULTS.mkdir(exist_ok=True)
    stem = "cost_model" if args.backend == "openvino" else f"cost_model-{args.backend}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str))
    (RESULTS / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
