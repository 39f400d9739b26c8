"""Budget-driven search on the host: edgekit vs NNCF int8 vs uniform pruning + int8 vs fp32, side by side
(../shared/BENCH.md).

Per model, the budgets are five fractions f of the fp32 engine's p50 L, from 0.8·L down to 0.3·L
(between L and L/5). Each is given to `edgekit search` (greedy, its defaults but --max-drop) as
`--speedup 1/f`: the search times the original fp32 engine when it starts, judges each candidate by
its ratio to the original timed side by side, and its budget in ms is f × that timing (on this shared
machine the same engine's p50 moves by up to 2× within minutes; a budget in ms fixed by another
timing would measure the drift, not the search). Per budget also uniform pruning (every group the
same keep ratio, the largest whose predicted latency meets the budget, distilled for the same time,
then int8 with edgekit's calibration). NNCF `nncf.quantize` (defaults) and fp32 are one point each.
At the end every engine is timed interleaved in one loop (40 rounds × 50 inferences): per-round
ratios to fp32, median, min and max. Accuracy on the test split, which the search never sees.

    .venv/bin/python bench/search.py [--only resnet] [--budgets 0.8,0.6,0.45,0.35,0.3] [--time-limit 600] [--max-drop 3]

The committed 96x96 MobileNetV2-like and encoder sections (README: Where it stands) were run as

    .venv/bin/python bench/search.py --only 96x96 --max-drop 1 --budgets 0.5,0.45 --time-limit 600 --report-budget 0.45
    .venv/bin/python bench/search.py --only encoder --max-drop 1 --budgets 0.5 --time-limit 1500 --report-budget 0

The first search pays for the model's sensitivity analysis; the later ones reuse it (same model, same
device), so their wall times are the walk, the closed loop and the final build.

Models: the zoo's ResNet-like and MobileNetV2-like (digits at 32x32, top-1 against labels), the MobileNetV2-like
at an edge classifier's 96x96 (`edgekit.zoo:mobilenet96`: at 32x32 half its time is the runtime's per-layer cost)
and examples/encoder.py at
its benchmark size (6 layers, hidden 384, 6 heads, sequence 64; random tokens, cosine against the fp32
engine's outputs: the search, uniform pruning and NNCF are all judged by that metric, and distilled by MSE).
The searches take every move (channels, heads and FFN widths, dropped blocks, low rank) and per-layer int8.

Writes bench/results/search.json and bench/results/search.md; with --only, the other models' sections are
kept from the last run (each section is its own side-by-side run, with its date and machine).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from common import block, interleaved, percentiles, run_models, timing_args, warm_up
from ptq import DATA, _load, nncf_int8

from edgekit import cost, graph
from edgekit.backends.base import get_backend
from edgekit.calibrate.run import calibrate
from edgekit.compress.distill import DistillSettings, distill
from edgekit.compress.prune import prune
from edgekit.data import Samples, load_data, split
from edgekit.metrics import load_metric, stack_outputs
from edgekit.models import load_model
from edgekit.plan import PrecisionPlan
from edgekit.search import evaluate
from edgekit.search.loop import SearchRequest, final_inputs, search
from edgekit.search.space import build_space, example_tensors
from edgekit.search_report import write_search_report
from edgekit.targets import load_target

# label: (model factory, data, the task metric the search and every row are judged by)
SEARCHED = {
    "resnet-like": ("edgekit.zoo:resnet", DATA, "top1"),
    "mobilenetv2-like (depthwise)": ("edgekit.zoo:mobilenet", DATA, "top1"),
    "mobilenetv2-like at 96x96 (depthwise, stride-2 stem)": ("edgekit.zoo:mobilenet96", "edgekit.zoo:data96", "top1"),
    "encoder (6 layers, hidden 384, 6 heads, sequence 64)": ("examples.encoder:build_base", "examples.encoder:data_base",
                                                             "cosine"),
}


def _outputs(engine, samples: Samples) -> list:
    return stack_outputs([engine.run(samples.sample(i)) for i in range(len(samples))])


def quality(metric, engine, samples: Samples, reference: list) -> float:
    """The task metric on a split: top-1 against its labels, or cosine against the fp32 engine's outputs."""
    return metric(_outputs(engine, samples), samples.labels, reference)


def uniform(loaded, splits, onnx_path: Path, budget_ms: float, model_cost, finetune_s: float, work: Path,
            objective: str = "auto") -> tuple[Path, dict]:
    """Every group the same ratio: the largest whose predicted int8 latency meets the budget."""
    import dataclasses

    host = load_target("host")
    space = build_space(loaded, onnx_path, host)
    example = example_tensors(loaded)
    chosen = None
    for ratio in np.arange(1.0, 0.2, -0.05):
        candidate = space.uniform(float(ratio))
        module = prune(loaded.module, example, dict(candidate.keep))
        layers = evaluate.fast_layer_table(module, loaded)
        precisions = {layer.name: "int8" for layer in evaluate.quantizable(layers)}
        predicted = model_cost.predict(layers, precisions).p50
        chosen = (float(ratio), candidate, module, predicted)
        if predicted <= budget_ms:
            break
    ratio, candidate, module, predicted = chosen
    distill(module, loaded.module, final_inputs(splits), DistillSettings(seconds=finetune_s, seed=0, objective=objective))  # as the search's
    pruned = dataclasses.replace(loaded, module=module.eval(), spec=f"{loaded.spec}#uniform{ratio:.2f}")
    pruned_onnx = graph.export_onnx(pruned, work / "model.onnx")
    result = calibrate(pruned_onnx, splits.calibration, host, PrecisionPlan("int8"), work)
    artifact = get_backend("openvino").build(onnx_path=result.qdq_path, plan=PrecisionPlan("int8", result.planned),
                                             target=host, out_dir=work)
    return artifact.path, {"ratio": ratio, "predicted_ms": predicted, "keep": dict(candidate.keep)}


def bench_model(label: str, searched: tuple[str, str, str], args, work: Path) -> dict:
    spec, data, metric_name = searched
    metric = load_metric(metric_name)
    host = load_target("host")
    loaded = load_model(spec)
    samples = load_data(data, loaded.inputs)
    splits = split(samples)
    onnx_path = graph.export_onnx(loaded, work / "model.onnx")
    fp32_dir = work / "fp32"
    fp32_dir.mkdir()
    fp32_xml = get_backend("openvino").build(onnx_path=onnx_path, plan=PrecisionPlan(), target=host, out_dir=fp32_dir).path
    engines = {"fp32": _load(fp32_xml, args.threads)}
    feed = splits.test.sample(0)
    warm_up(engines["fp32"], feed)
    fp32_p50 = float(np.median(block(engines["fp32"], feed, 500)))  # reported
    (work / "nncf").mkdir()
    engines["NNCF int8 (defaults)"] = _load(nncf_int8(onnx_path, splits.calibration, work / "nncf", best=False), args.threads)
    rows: dict[str, dict] = {"fp32": {}, "NNCF int8 (defaults)": {}}
    first, searches = None, {}
    scope = cost.scope_of(graph.layer_table(onnx_path))  # the searches' own cost-model observations
    for fraction in args.budgets:
        name = f"edgekit, budget {fraction:.2f}·fp32"
        out = work / f"search-{fraction}"
        if first is not None:  # the same model on the same device: its sensitivity analysis is reused
            shutil.copytree(first / "sensitivity", out / "sensitivity")
            shutil.copy(first / "model.onnx", out / "model.onnx")
        started = time.monotonic()
        result = search(SearchRequest(target="host", speedup=1 / fraction, model=spec, data=data, out=out,
                                      max_accuracy_drop=args.max_drop, time_limit_s=args.time_limit,
                                      final_finetune_s=args.finetune, metric=metric_name))
        budget = result.budget.latency_ms
        first = first or out
        wall = time.monotonic() - started
        searches[name] = (out, result, fraction)
        xml = Path(result.chosen.run_dir) / "model.xml"
        engines[name] = _load(xml, args.threads)
        rows[name] = {"budget_ms": budget, "fraction": fraction, "search_s": wall, "trials": result.trials,
                      "predicted_ms": result.latency.predicted, "search_judged_ms": result.latency.judged_ms,
                      "search_original_ms": result.latency.original_ms,
                      "search_ratio": (result.latency.side_by_side or {}).get("ratio"),
                      "cost_model_errors": [r.cost_model_error for r in result.rounds],
                      "cost_model_all_errors": result.cost_model["errors"], "search_met": result.budget.met,
                      "validation_accuracy_search": result.accuracy.validation,
                      "keep": result.chosen.keep, "moves": result.chosen.moves,
                      "int8_layers": sum(p == "int8" for p in (result.chosen.precision or {}).values())}
        uname = f"uniform + int8, budget {fraction:.2f}·fp32"
        udir = work / f"uniform-{fraction}"
        udir.mkdir()
        model_cost = cost.CostModel(host, scope=scope,  # what the searches taught it about this model,
                                    scale_ms=result.latency.original_ms)  # on the scale the budget is in
        uxml, info = uniform(loaded, splits, onnx_path, budget, model_cost, args.finetune, udir,
                             "mse" if metric.name != "top1" else "auto")
        engines[uname] = _load(uxml, args.threads)
        rows[uname] = {"budget_ms": budget, "fraction": fraction, **info}
    test = splits.test
    reference = {part: _outputs(engines["fp32"], getattr(splits, part)) for part in ("test", "validation")}
    times, ratios = interleaved(engines, feed, args.rounds, args.block)
    for name, engine in engines.items():
        row = rows[name]
        row.update(accuracy=quality(metric, engine, test, reference["test"]), latency_ms=percentiles(times[name]))
        if name in ratios:
            r = ratios[name]
            row["ratio_over_fp32"] = {"median": float(np.median(r)), "min": float(min(r)), "max": float(max(r))}
        if "budget_ms" in row:
            # Judged where the machine's drift divides out, independently of the search's own timing: the
            # engine's per-round p50 ratio to fp32 in this interleaved timing, median, against the fraction.
            row["met"] = row["ratio_over_fp32"]["median"] <= row["fraction"]
            row["met_absolute"] = row["latency_ms"]["p50"] <= row["budget_ms"]
        row["validation_accuracy"] = quality(metric, engine, splits.validation, reference["validation"])
    base = rows["fp32"]["accuracy"]
    for row in rows.values():
        row["accuracy_drop_pt"] = 100 * (base - row["accuracy"])
    for out, result, fraction in searches.values():  # each search's report.html, with the peers measured here
        uniform_name = f"uniform + int8, budget {fraction:.2f}·fp32"
        peers = [{"name": peer if peer != uniform_name else "uniform + int8",
                  "latency_ms": rows[peer]["latency_ms"]["p50"], "accuracy": rows[peer]["validation_accuracy"], "kind": "measured"}
                 for peer in ("fp32", "NNCF int8 (defaults)", uniform_name)]
        page = write_search_report(out, result.as_dict(), peers)
        if fraction == args.report_budget:
            args.out.mkdir(parents=True, exist_ok=True)
            shutil.copy(page, args.out / "search-report.html")
    return {"model": label, "spec": spec, "data": data, "metric": metric.describe(), "fp32_p50_ms": fp32_p50,
            "test_samples": len(test), "max_drop": args.max_drop, "rows": rows}


def to_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Budget-driven search on the host: edgekit vs NNCF int8 vs uniform pruning + int8, {m['date']}", "",
             f"Machine: {m['cpu']}, ISA {', '.join(m['isa'])}, {m['cores']} cores, threads {report['threads']}; "
             f"OpenVINO {m['versions'].get('openvino')}, NNCF {m['versions'].get('nncf')}. Latency: every engine timed "
             f"interleaved, {report['rounds']} rounds × {report['block']} inferences, batch 1, all measured on this machine; "
             "ratio = engine p50 / fp32 p50 per round (median, min–max). Each budget is a fraction f of the fp32 p50, given to "
             "the search as `--speedup 1/f` (with the `--max-accuracy-drop` in the model's heading): it times the original fp32 "
             "engine when it starts and judges candidates by their ratio to it, timed side by side (its budget in ms = f × "
             "that timing; the machine is shared and its speed drifts by up to 2× within minutes). A budget counts as met "
             "when the engine's ratio to fp32 in this final interleaved timing, taken apart from the search, is within f. "
             "Accuracy on the test split, never seen by the search.", ""]
    for r in report["results"]:
        metric = r.get("metric", {"name": "top1", "unit": "top-1 accuracy (fraction)"})
        run_on = r.get("machine", m)
        lines += [f"## {r['model']} (fp32 p50 {r['fp32_p50_ms']:.3f} ms; {r['test_samples']} test samples; searches with "
                  f"--max-accuracy-drop {r.get('max_drop', 1):g})", "",
                  f"Run {run_on['date']} on {run_on['cpu']} ({', '.join(run_on.get('isa', []))}); metric {metric['name']} ({metric['unit']}; for cosine the "
                  "reference is the fp32 engine's outputs).", "",
                  f"| engine | p50 / p90 / p99 (ms) | met | ratio to fp32 | speed-up | test {metric['name']} | drop (pt) | search (s) | search: ratio, judged / budget (ms) | cost-model error | moves |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, row in r["rows"].items():
            lat, ratio = row["latency_ms"], row.get("ratio_over_fp32")
            errors = ", ".join(f"{e:+.0%}" for e in row.get("cost_model_errors", []) if e is not None)
            judged_ms = row.get("search_judged_ms", row.get("search_measured_ms"))  # the name before search.json format 2
            searched_ms = (f"{row['search_ratio']:.2f}, {judged_ms:.3f} / {row['budget_ms']:.3f}"
                           if judged_ms and row.get("search_ratio") else "–")
            lines.append(
                f"| {name} | {lat['p50']:.3f} / {lat['p90']:.3f} / {lat['p99']:.3f} | "
                f"{'yes' if row.get('met') else ('no' if 'met' in row else '–')} | "
                + (f"{ratio['median']:.2f} ({ratio['min']:.2f}–{ratio['max']:.2f})" if ratio else "1") + " | "
                + (f"{1 / ratio['median']:.2f}×" if ratio else "1×")
                + f" | {100 * row['accuracy']:.2f} % | {row['accuracy_drop_pt']:+.2f} | "
                + (f"{row['search_s']:.0f}" if "search_s" in row else "–") + f" | {searched_ms} | {errors or '–'} | "
                + f"{_moves(row)} |")
        searched = [row for row in r["rows"].values() if "search_s" in row]
        errors = [abs(e) for row in searched for e in row.get("cost_model_errors", []) if e is not None]
        if searched:
            lines += ["", f"Budgets met (measured here, interleaved): {sum(bool(row.get('met')) for row in searched)} of "
                      f"{len(searched)}. Cost model |error| on the {len(errors)} candidates the searches built and measured: "
                      f"mean {100 * np.mean(errors):.1f} %, max {100 * max(errors):.1f} %. Longest search: "
                      f"{max(row['search_s'] for row in searched):.0f} s."]
        lines.append("")
    return "\n".join(lines)


def _moves(row: dict) -> str:
    """What a search chose beside precisions: groups cut, blocks dropped, ranks; uniform: its ratio."""
    if "ratio" in row:
        return f"every group × {row['ratio']:.2f}"
    shown = []
    for move in row.get("moves") or []:
        if move["kind"] == "drop":
            shown.append(f"{move['block']} dropped")
        elif move["kind"] == "rank":
            shown.append(f"{move['layer']} rank {move['rank']}")
        else:
            shown.append(f"{move['group']} {move['to']}/{move['from']}")
    if "search_s" in row and "moves" not in row:
        return "not recorded"  # a run from before the moves were written down
    return ", ".join(shown) or ("–" if "search_s" not in row else "none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    timing_args(parser)
    parser.set_defaults(only="resnet")
    parser.add_argument("--budgets", default="0.8,0.6,0.45,0.35,0.3", help="Budgets as fractions of the fp32 p50.")
    parser.add_argument("--report-budget", type=float, default=0.35,
                        help="Copy this budget's report.html (Pareto front, per-layer plan) to the results.")
    parser.add_argument("--time-limit", type=float, default=600.0, help="Each search's time limit (s).")
    parser.add_argument("--finetune", type=float, default=60.0, help="Distillation of each chosen model (s).")
    parser.add_argument("--max-drop", type=float, default=3.0,
                        help="The searches' --max-accuracy-drop (pt): the budget binds, accuracy is what it costs.")
    args = parser.parse_args()
    args.budgets = [float(b) for b in args.budgets.split(",")]
    run_models("search", SEARCHED, bench_model, to_markdown, args)


if __name__ == "__main__":
    main()
