"""The `edgekit` command line: each command parses, calls one library function, prints.

Errors meant for users (`EdgekitError`) print one line on stderr and exit 2 (bad input) or 1
(failure); anything else prints one line too, and the traceback only with --debug.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgekit.errors import BUDGET_MISSED, EdgekitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find the fastest version of a model that meets its budget on a device, and ship it.")
targets_app = typer.Typer(no_args_is_help=True, help="The device registry (targets/*.yaml).")
app.add_typer(targets_app, name="targets")
fleet_app = typer.Typer(no_args_is_help=True, help="Fleets: one manifest, every device class built, bundled, signed, exported.")
app.add_typer(fleet_app, name="fleet")
bundle_app = typer.Typer(no_args_is_help=True, help="Signed bundles: keys, signatures, verification.")
app.add_typer(bundle_app, name="bundle")
devices_app = typer.Typer(no_args_is_help=True, help="The device inventory: real devices reached through the edgekit agent.")
app.add_typer(devices_app, name="devices")
agent_app = typer.Typer(no_args_is_help=True, help="The on-device agent: builds and measures engines on the device for a host.")
app.add_typer(agent_app, name="agent")
out = Console(soft_wrap=True)  # lines (paths, warnings) never wrapped mid-word; tables still fit the width
err = Console(stderr=True, soft_wrap=True)
STATE = {"debug": False}

TargetsDir = Annotated[list[Path] | None, typer.Option("--targets-dir", help="Extra folder of target YAMLs (repeatable).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
Duration = Annotated[float, typer.Option(help="Time inferences for at least this many seconds (and --repeats).")]
Method = Annotated[str, typer.Option("--method", help="Activation ranges: auto (try every method, keep the one closest to fp32), minmax, percentile, entropy (TensorRT's KL) or mse.")]
Percentile = Annotated[float, typer.Option(help="Percentile for --method percentile.")]
CalSamples = Annotated[int | None, typer.Option("--calibration-samples", help="Use at most this many calibration samples.")]
BiasCorrection = Annotated[bool, typer.Option("--bias-correction/--no-bias-correction", help="Correct the mean shift int8 weights cause.")]
Equalization = Annotated[str, typer.Option(help="Cross-layer equalization: auto (kept where it measures closer to fp32), on, off.")]
PlanFile = Annotated[Path | None, typer.Option("--plan", help="Per-layer precisions: YAML/JSON {layer: fp32|fp16|int8} (see `edgekit inspect`).")]
DeviceName = Annotated[str | None, typer.Option("--device", help="Measure on this device of the inventory, through its edgekit agent.")]
DevicesFile = Annotated[Path | None, typer.Option("--devices", help="Device inventory (default: $EDGEKIT_DEVICES, else ./devices.yaml).")]
MetricOpt = Annotated[str | None, typer.Option("--metric", help="What accuracy means: top1, agreement, cosine, rel-mse, psnr, or "
                                               "package.module:function (default: chosen from the data and printed).")]
RecipeOpt = Annotated[Path | None, typer.Option("--recipe", help="A data recipe (calibration/NAME.yaml): its data, and its model, "
                                                "metric and input shape unless given.")]
InputShape = Annotated[list[str] | None, typer.Option("--input-shape", help="[NAME:]D1,D2,..[:DTYPE], repeatable (TorchScript, factories without examples).")]


def _folder_or_new(param: typer.CallbackParam, path: Path | None) -> Path | None:
    """--out (or --cache) names a folder to write into, made if missing: a file there, or a folder that
    cannot be written, is one line before any work, not a crash after it."""
    if path is None:
        return None
    from edgekit.user_files import check_folder

    check_folder(path, param.opts[0] if param.opts else f"--{param.name}")
    return path


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    STATE["debug"] = debug


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _precision_counts(planned: dict[str, str]) -> str:
    """'3 of 5 layers int8', or per width where a fixed-point plan mixes them: '2 int12, 3 int8 of 5 layers'."""
    counts = {p: sum(v == p for v in planned.values()) for p in sorted(set(planned.values()))}
    if set(counts) <= {"int8", "fp32", "fp16"}:
        return f"{counts.get('int8', 0)} of {len(planned)} layers int8"
    return ", ".join(f"{n} {p}" for p, n in sorted(counts.items(), key=lambda kv: kv[0])) + f" of {len(planned)} layers"


def _settings(repeats: int, warmup: int, threads: int | None, duration: float):
    from edgekit.profile import ProfileSettings

    return ProfileSettings(repeats=repeats, warmup=warmup, threads=threads, min_time_s=duration)


@app.command()
def deploy(
    target: Annotated[str, typer.Option("--target", "-t", help="Target name, alias or YAML file.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help=".onnx, .pt/.ts, .pt2 or pkg.module:factory (default: the digits demo).")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help=".npz, a folder of .npy or images, or pkg.module:factory.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", callback=_folder_or_new,
                                                 help="Run directory (default runs/MODEL-TARGET-TIME).")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, fp16 or int8 for every layer, or mixed: int8 where the sensitivity analysis "
                                                      "finds it harmless and faster, never slower than fp32 (default: fp32 where the target runs it).")] = None,
    plan: PlanFile = None,
    method: Method = "auto",
    percentile: Percentile = 99.99,
    calibration_samples: CalSamples = None,
    bias_correction: BiasCorrection = True,
    equalization: Equalization = "auto",
    backend: Annotated[str | None, typer.Option(help="Build with this backend instead of the target's.")] = None,
    latency_budget_ms: Annotated[float | None, typer.Option(help="p50 latency to meet, in ms: a PyTorch model is searched "
                                                                 "(pruned and quantized) to meet it first; otherwise say whether it is met.")] = None,
    search_first: Annotated[bool, typer.Option("--search/--no-search", help="With --latency-budget-ms: run the search first (PyTorch models).")] = True,
    max_accuracy_drop: Annotated[float | None, typer.Option(help="Largest loss of the metric allowed, in points: with the search "
                                                                 "(default 1), or with --precision int8|mixed: accuracy-aware int8.")] = None,
    flash_budget_mb: Annotated[float | None, typer.Option(help="With the search: the shipped files, compressed, must fit in this many MB.")] = None,
    time_limit: Annotated[float, typer.Option("--time-limit", help="With the search: stop walking after this many seconds.")] = 600.0,
    repeats: Annotated[int, typer.Option(help="Timed inferences (at least; and at least 1 s).")] = 100,
    warmup: Annotated[int, typer.Option(help="Warm-up inferences (at least; and at least 200 ms).")] = 10,
    threads: Annotated[int | None, typer.Option(help="Runtime threads (default: the target's cores).")] = None,
    duration: Duration = 1.0,
    input_shape: InputShape = None,
    metric: MetricOpt = None,
    recipe: RecipeOpt = None,
    device: DeviceName = None,
    devices: DevicesFile = None,
    targets_dir: TargetsDir = None,
    as_json: JsonOut = False,
) -> None:
    """Load → export → build → profile → report, on the target's own runtime; with a latency budget,
    the search (`edgekit search`) finds the model to build first."""
    from edgekit.calibrate.run import CalibrationOptions
    from edgekit.deploy import DeployRequest, searchable
    from edgekit.deploy import deploy as run_deploy

    if latency_budget_ms is not None and search_first and searchable(model):
        if precision is not None or plan is not None:
            from edgekit.errors import BadInput

            raise BadInput("with --latency-budget-ms the search chooses each layer's precision: "
                           "drop --precision/--plan, or pass --no-search to only check the budget")
        search(target=target, latency_budget_ms=latency_budget_ms, model=model, data=data, out_dir=out_dir,
               max_accuracy_drop=1.0 if max_accuracy_drop is None else max_accuracy_drop, flash_budget_mb=flash_budget_mb,
               time_limit=time_limit,
               backend=backend, method=method, device=device, devices=devices, metric=metric,
               threads=threads, targets_dir=targets_dir, as_json=as_json)
        return
    if flash_budget_mb is not None:
        from edgekit.errors import BadInput

        raise BadInput("--flash-budget-mb is met by the search: give --latency-budget-ms too, with a PyTorch model")
    request = DeployRequest(target=target, model=model, data=data, out=out_dir, precision=precision, backend=backend,
                            input_shapes=tuple(input_shape or ()), targets_dir=tuple(targets_dir or ()),
                            latency_budget_ms=latency_budget_ms, plan_file=plan, device=device, devices_file=devices,
                            calibration=CalibrationOptions(method, percentile, calibration_samples, bias_correction, equalization),
                            settings=_settings(repeats, warmup, threads, duration), metric=metric,
                            max_accuracy_drop=max_accuracy_drop, recipe=recipe)
    with err.status("starting") as status:
        report = run_deploy(request, step=lambda name: status.update(f"[bold]{name}[/]…"))
    if as_json:
        _print_json(report)
    else:
        _print_summary(report)
    _exit_on_missed_budget((report.get("budget") or {}).get("met", True))


@app.command()
def search(
    target: Annotated[str, typer.Option("--target", "-t", help="Target name, alias or YAML file.")],
    latency_budget_ms: Annotated[float | None, typer.Option(help="p50 latency the model must meet on the target, in ms.")] = None,
    speedup: Annotated[float | None, typer.Option(help="Instead of --latency-budget-ms: at least this many times faster than "
                                                       "the original float model, timed side by side on the device.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="PyTorch model: pkg.module:factory, .pt/.ts or .pt2 (default: the digits demo).")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data: split into calibration, validation and test.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", callback=_folder_or_new,
                                                 help="Run directory (default runs/MODEL-TARGET-search-TIME).")] = None,
    memory_budget_mb: Annotated[float | None, typer.Option(help="Weights + peak activations must fit in this many MB.")] = None,
    flash_budget_mb: Annotated[float | None, typer.Option(help="The shipped engine's files, compressed, must fit in this many MB "
                                                               "(sparsity and weight sharing, measured).")] = None,
    max_accuracy_drop: Annotated[float, typer.Option(help="Largest validation accuracy loss allowed, in points.")] = 1.0,
    strategy: Annotated[str, typer.Option(help="greedy (NetAdapt-style, default) or nsga (Optuna NSGA-II).")] = "greedy",
    moves: Annotated[str, typer.Option(help="Structural moves the walk may take, comma-separated: prune (channels, "
                                            "heads, FFN widths), drop (whole blocks), rank (low-rank layers).")] = "prune,drop,rank",
    trials: Annotated[int, typer.Option(help="Evaluate at most this many candidates.")] = 200,
    time_limit: Annotated[float, typer.Option("--time-limit", help="Stop walking after this many seconds.")] = 600.0,
    resume: Annotated[Path | None, typer.Option(help="Continue the search in this run directory.")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default: SQLite in the run directory).")] = None,
    finetune: Annotated[float, typer.Option("--finetune", help="Seconds of distillation for the chosen candidate.")] = 60.0,
    backend: Annotated[str | None, typer.Option(help="Build with this backend instead of the target's.")] = None,
    method: Method = "auto",
    threads: Annotated[int | None, typer.Option(help="Runtime threads (default: the target's cores).")] = None,
    metric: MetricOpt = None,
    device: DeviceName = None,
    devices: DevicesFile = None,
    targets_dir: TargetsDir = None,
    as_json: JsonOut = False,
) -> None:
    """The most accurate pruned and quantized model that meets the budget, measured on the device."""
    from edgekit.calibrate.run import CalibrationOptions
    from edgekit.profile import ProfileSettings
    from edgekit.search.loop import SearchRequest
    from edgekit.search.loop import search as run_search

    request = SearchRequest(target=target, latency_budget_ms=latency_budget_ms, speedup=speedup, model=model, data=data, out=out_dir,
                            memory_budget_mb=memory_budget_mb, flash_budget_mb=flash_budget_mb,
                            max_accuracy_drop=max_accuracy_drop, strategy=strategy,
                            moves=tuple(m.strip() for m in moves.split(",") if m.strip()), trials=trials, time_limit_s=time_limit, resume=resume, storage=storage, backend=backend,
                            final_finetune_s=finetune, calibration=CalibrationOptions(method),
                            settings=ProfileSettings(threads=threads), targets_dir=tuple(targets_dir or ()),
                            device=device, devices_file=devices, metric=metric)
    with err.status("starting") as status:
        result = run_search(request, progress=lambda line: (status.update(f"[bold]{line}[/]…"), err.print(f"  {line}")))
    if as_json:
        _print_json(result)
    else:
        _print_search(result)
    _exit_on_missed_budget(result["budget"]["met"])


def _exit_on_missed_budget(met: bool) -> None:
    """A script or CI job must tell a missed budget from success without reading the report (README: Errors)."""
    if not met:
        err.print(f"edgekit: the budget was missed (exit {BUDGET_MISSED})")
        raise typer.Exit(BUDGET_MISSED)


def _move_text(move: dict) -> str:
    if move["kind"] == "drop":
        return f"{move['block']} dropped"
    if move["kind"] == "rank":
        return f"{move['layer']} rank {move['rank']}"
    if move["kind"] == "heads":
        return f"{move['group']} {move['heads']['to']}/{move['heads']['from']} heads"
    return f"{move['group']} {move['to']}/{move['from']}"


def _print_search(result: dict) -> None:
    b, lat, acc = result["budget"], result["latency_ms"], result["accuracy"]
    table = Table(title=f"edgekit search → {result['target']} ({result['backend']})", box=box.SQUARE, show_header=False)
    speedup = f" ({b['speedup']:g}× faster than the original)" if b.get("speedup") else ""
    table.add_row("budget", f"{b['latency_ms']:.4g} ms{speedup}: {'met' if b['met'] else 'MISSED'} ({b['judged_on']})")
    table.add_row("latency", f"{lat['predicted']:.3f} ms predicted" +
                  (f" · {lat['measured']:.3f} ms measured" if lat["measured"] is not None else " (not measured: the device is not here)"))
    if lat.get("side_by_side"):
        side = lat["side_by_side"]
        table.add_row("measured how", f"{side['ratio']:.3f}× the original timed beside it × its {lat['original_ms']:.3f} ms at the start "
                      f"(raw p50 {side['raw_p50_ms']:.3f} ms, original now {side['original_now_ms']:.3f} ms)")
    if acc["test"] is not None:
        name = result.get("metric", {}).get("name", "accuracy")
        table.add_row(f"{name} (test)", f"{acc['test']:.4f}  (original {acc['test_original']:.4f}, drop {acc['test_drop_pt']:+.2f} pt)")
    if result.get("flash"):
        f = result["flash"]
        table.add_row("flash (measured)", f"{f['compressed_mb']:.3f} MB compressed of {f['raw_mb']:.3f} MB, budget {f['budget_mb']} MB: "
                      f"{'met' if f['met'] else 'MISSED'}; sparsity {f['action']['sparsity']:.0%}"
                      + (f", {f['action']['clusters']} shared values per layer" if f["action"]["clusters"] else ""))
    table.add_row("moves", ", ".join(_move_text(m) for m in result["chosen"].get("moves") or []) or "none")
    planned = result["chosen"]["precision"] or {}
    table.add_row("precision", _precision_counts(planned))
    for r in result["rounds"]:
        measured = f"{r['measured_ms']:.3f} ms measured" if r["measured_ms"] is not None else "not measured"
        error = f", cost model {r['cost_model_error']:+.1%}" if r["cost_model_error"] is not None else ""
        table.add_row("round", f"walked to {r['walk_budget_ms']:.3f} ms ({r['stopped']}): {r['predicted_ms']:.3f} ms predicted, {measured}{error}")
    table.add_row("trials", f"{result['trials']} in {result['seconds']} s")
    table.add_row("run directory", result["chosen"]["run_dir"])
    out.print(table)


@app.command()
def calibrate(
    target: Annotated[str, typer.Option("--target", "-t", help="Target name, alias or YAML file.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model spec (default: the digits demo).")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Calibration data (default: the demo's digits).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", callback=_folder_or_new,
                                                 help="Run directory (default runs/MODEL-TARGET-TIME).")] = None,
    precision: Annotated[str, typer.Option(help="int8 (every layer the plan allows) or mixed (the sensitivity analysis decides).")] = "int8",
    plan: PlanFile = None,
    method: Method = "auto",
    percentile: Percentile = 99.99,
    calibration_samples: CalSamples = None,
    bias_correction: BiasCorrection = True,
    equalization: Equalization = "auto",
    input_shape: InputShape = None,
    metric: MetricOpt = None,
    recipe: RecipeOpt = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(help="Accuracy-aware int8: the fastest plan within this loss of "
                                                                 "the metric, in points (each step built and timed here).")] = None,
    targets_dir: TargetsDir = None,
    as_json: JsonOut = False,
) -> None:
    """Int8 scales on the calibration split, written in the target runtime's own form (Q/DQ ONNX,
    OpenVINO int8 IR, TensorRT calibration cache + layer precisions) and scales.json."""
    from edgekit.calibrate.run import CalibrationOptions
    from edgekit.deploy import DeployRequest
    from edgekit.deploy import deploy as run_deploy
    from edgekit.errors import BadInput

    if precision not in ("int8", "mixed"):
        raise BadInput(f"edgekit calibrate --precision takes int8 or mixed, not '{precision}'")
    request = DeployRequest(target=target, model=model, data=data, out=out_dir, precision=precision, plan_file=plan,
                            input_shapes=tuple(input_shape or ()), targets_dir=tuple(targets_dir or ()), measure=False,
                            calibration=CalibrationOptions(method, percentile, calibration_samples, bias_correction, equalization),
                            metric=metric, max_accuracy_drop=max_accuracy_drop, recipe=recipe)
    with err.status("starting") as status:
        report = run_deploy(request, step=lambda name: status.update(f"[bold]{name}[/]…"))
    if as_json:
        _print_json(report)
        return
    cal = report["calibration"]
    out.print(f"calibrated {report['model']['name']} for {report['target']['name']}: {cal['int8_layers']} int8 layer(s), "
              f"method {cal['method']}, {cal['samples']} samples, {cal['seconds']} s")
    for layer, why in cal["demoted"].items():
        out.print(f"  kept float: {layer}: {why}")
    if "mixed" in report["precision"]:
        out.print(f"mixed: {_mixed_line(report['precision']['mixed'])}")
    _print_warnings(report)
    for name, path in report["artifacts"].items():
        if isinstance(path, str):
            out.print(f"  {name:<26} {Path(report['run_dir']) / path}")
    out.print(f"status: {report['status']}")


def _short(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.0f}k" if count >= 1e3 else str(count)


def _mixed_line(choice: dict) -> str:
    shipped = "shipped mixed" if choice["chosen"] == "mixed" else f"shipped {choice['chosen']}"
    return f"{shipped}: {choice['reason']}"


def _print_summary(report: dict) -> None:
    table = Table(title=f"edgekit deploy → {report['target']['name']} ({report['backend']})", show_header=False)
    lat = report["latency_ms"]
    table.add_row("model", f"{report['model']['name']}  ({report['model']['totals']['macs'] / 1e6:.2f} M MACs, "
                           f"{report['model']['totals']['params'] / 1e3:.1f} k params)")
    precision = report["precision"]
    table.add_row("precision", f"{precision['label']} ({_precision_counts(precision.get('planned', {}))})")
    if "executed" in precision:
        mism = precision["mismatches"]
        unverified = precision.get("unverified") or []
        table.add_row("precision (executed)", ("as planned" if not mism else
                      f"{len(mism)} layer(s) differ: " + ", ".join(f"{k} runs {v['executed']}" for k, v in list(mism.items())[:3]))
                      + (f"; {len(unverified)} layer(s) fused out of sight, unverified" if unverified else ""))
    if "mixed" in precision:
        table.add_row("mixed", _mixed_line(precision["mixed"]))
    if "accuracy_aware" in precision:
        aware = precision["accuracy_aware"]
        table.add_row("accuracy-aware", escape(f"{len(aware['path'])} steps measured; {aware['reason']}"))
    if "calibration" in report:
        cal = report["calibration"]
        table.add_row("calibration", f"{cal['method']}, {cal['samples']} samples, {cal['seconds']} s"
                      + (f", {len(cal['demoted'])} layer(s) kept float" if cal["demoted"] else ""))
    spread = f" · p90 {lat['p90']:.3f} · p99 {lat['p99']:.3f} · {lat['samples']} runs" if lat["kind"] == "measured" else ""
    table.add_row(f"latency ({lat['kind']})", f"p50 {lat['p50']:.3f} ms{spread}")
    if report.get("device"):
        dev = report["device"]
        table.add_row("measured on", f"device {dev['name']} ({dev['target']}, {dev.get('hostname', '?')}) through its agent at {dev['url']}")
    if lat["kind"] == "measured":
        table.add_row("latency (predicted)", f"{report['predicted_latency_ms']['p50']:.3f} ms (roofline)")
        table.add_row("throughput", f"{report['throughput_fps']:.0f} inferences/s, {report['threads']} threads")
    acc = report.get("accuracy") or {}
    where = f"; checked here: {acc['where']}" if acc.get("where") else ""
    if acc.get("test") is not None:
        table.add_row("accuracy (test)", f"{acc['test']:.4f}  (source model {acc['reference']:.4f}, {acc['samples']} samples{where})")
    if acc.get("agreement") is not None and (acc.get("metric") or {}).get("name") in (None, "top1", "agreement"):
        table.add_row("top-1 agreement", f"{acc['agreement']:.4f}")
    if acc.get("metric"):
        m = acc["metric"]
        table.add_row(f"metric ({m['name']})", f"{m['value']:.4f}  (source model {m['source']:.4f}, drop {m['drop']:.3g} points; "
                                             f"{escape(m['unit'])}{where})")
    if report.get("metric", {}).get("why"):
        table.add_row("metric chosen", escape(f"{report['metric']['name']}: {report['metric']['why']} (--metric to change)"))
    if "budget" in report:
        b = report["budget"]
        table.add_row("budget", f"{b['latency_ms']} ms: {'met' if b['met'] else 'MISSED'} ({b['judged_on']})")
    build = report.get("build") or {}
    for line in build.get("summary", []):  # what the backend found: op coverage, resource estimate, ...
        table.add_row("build", escape(line))
    if build.get("pending"):
        table.add_row("on the device", escape(build["pending"]))
    table.add_row("status", escape(report["status"]))
    table.add_row("run directory", report["run_dir"])
    out.print(table)
    _print_warnings(report)


def _print_warnings(report: dict) -> None:
    """Weak data and calibration: one line each, on stderr (also in report.json)."""
    for warning in (report.get("data") or {}).get("warnings", []) + (report.get("calibration") or {}).get("warnings", []):
        err.print(f"[yellow]warning:[/] {escape(warning)}")


@app.command()
def inspect(
    model: Annotated[str | None, typer.Argument(help="Model spec (default: the digits demo).")] = None,
    input_shape: InputShape = None,
    sensitivity: Annotated[bool, typer.Option("--sensitivity", help="Per layer: int8's accuracy loss (validation split) and "
                                              "latency gain on the target; writes sensitivity.json.")] = False,
    target: Annotated[str, typer.Option("--target", "-t", help="Target for --sensitivity.")] = "host",
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data for --sensitivity (default: the demo's digits).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", callback=_folder_or_new,
                                                 help="Where --sensitivity writes (default runs/MODEL-TARGET-TIME).")] = None,
    backend: Annotated[str | None, typer.Option(help="Measure with this backend instead of the target's.")] = None,
    method: Method = "auto",
    calibration_samples: CalSamples = None,
    threads: Annotated[int | None, typer.Option(help="Runtime threads (default: the target's cores).")] = None,
    duration: Duration = 1.0,
    metric: MetricOpt = None,
    recipe: RecipeOpt = None,
    targets_dir: TargetsDir = None,
    as_json: JsonOut = False,
) -> None:
    """Export to ONNX (checked against the source model) and print the layer table; with
    --sensitivity, each int8-capable layer's accuracy loss and latency gain on the target."""
    if sensitivity:
        _inspect_sensitivity(model, input_shape, target, data, out_dir, backend, method, calibration_samples, threads,
                             duration, targets_dir, as_json, metric, recipe)
        return
    import tempfile

    from edgekit import graph
    from edgekit.models import load_model

    loaded = load_model(model, input_shape)
    with tempfile.TemporaryDirectory() as tmp:
        with err.status("exporting to ONNX…"):
            onnx_path = graph.export_onnx(loaded, Path(tmp) / "model.onnx")
            check = graph.check_export(loaded, onnx_path, [loaded.example])
            layers = graph.layer_table(onnx_path)
    if as_json:
        _print_json({"model": loaded.spec, "inputs": [str(s) for s in loaded.inputs], "export_check": check.__dict__,
                     "totals": graph.totals(layers), "layers": graph.table_as_dicts(layers)})
        return
    table = Table(title=f"{loaded.name}: {', '.join(map(str, loaded.inputs))}")
    for col in ("layer", "op", "input", "output", "MACs", "params", "bytes"):
        table.add_column(col, justify="right" if col in ("MACs", "params", "bytes") else "left")
    for layer in layers:
        table.add_row(layer.name, layer.op, " ".join(map(str, layer.input_shapes)), str(layer.output_shape),
                      f"{layer.macs:,}", f"{layer.params:,}", f"{layer.bytes_moved:,}")
    total = graph.totals(layers)
    table.add_row("total", "", "", "", f"{total['macs']:,}", f"{total['params']:,}", f"{total['bytes_moved']:,}", style="bold")
    out.print(table)
    out.print(f"ONNX export matches the source model: max |diff| {check.max_abs_diff:.2e} "
              f"(rtol {check.rtol}, atol {check.atol}, {check.samples} input)")


def _inspect_sensitivity(model, input_shape, target, data, out_dir, backend, method, calibration_samples, threads,
                         duration, targets_dir, as_json, metric=None, recipe=None) -> None:
    from edgekit.calibrate.run import CalibrationOptions
    from edgekit.deploy import DeployRequest, inspect_sensitivity

    request = DeployRequest(target=target, model=model, data=data, out=out_dir, backend=backend,
                            input_shapes=tuple(input_shape or ()), targets_dir=tuple(targets_dir or ()),
                            calibration=CalibrationOptions(method, samples=calibration_samples),
                            settings=_settings(100, 10, threads, duration), metric=metric, recipe=recipe)
    with err.status("starting") as status:
        result, path = inspect_sensitivity(request, step=lambda name: status.update(f"[bold]{name}[/]…"))
    if as_json:
        _print_json({**result, "path": str(path)})
        return
    lat, acc = result["latency"], result["accuracy"]
    table = Table(title=f"int8 sensitivity on {result['target']['name']} ({result['backend']}, latency {lat['kind']})",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    loss = "top-1\nloss pt" if acc["labels"] else "top-1\nagree"
    for col in ("layer", "op", "MACs", loss, "output\nerror", "int8\nµs", "fp32\nµs", "gain\nµs", "verdict"):
        table.add_column(col, justify="left" if col in ("layer", "op", "verdict") else "right", no_wrap=True)
    style = {"int8": "green", "harmful": "red", "slower": "yellow", "float": "dim"}

    def us(value) -> str:
        return "" if value is None else f"{value * 1e3:.1f}"

    for name, layer in result["layers"].items():
        a, t = layer["accuracy"] or {}, layer["latency"]
        shown = a.get("top1_loss_pt") if acc["labels"] else a.get("agreement")
        table.add_row(name, layer["op"], _short(layer["macs"]), "" if shown is None else f"{shown:.2f}" if acc["labels"] else f"{shown:.3f}",
                      "" if not a else f"{a['output_error']:.1e}", us(t.get("int8_ms")), us(t.get("fp32_ms")),
                      us(t.get("gain_ms")), f"[{style[layer['verdict']]}]{layer['verdict']}[/]")
    out.print(table)
    for name, layer in result["layers"].items():
        if layer["verdict"] != "int8":
            out.print(f"  {name}: {layer['verdict']}: {layer['reason']}")
    whole = acc["all_int8"]
    out.print(f"whole model, {lat['kind']}: fp32 p50 {lat['fp32']['p50']:.4f} ms, all-int8 p50 {lat['int8']['p50']:.4f} ms"
              + (f"; all-int8 top-1 {whole['top1']:.4f} (fp32 {acc['fp32_top1']:.4f})" if whole.get("top1") is not None else "")
              + f", output error {whole['output_error']:.1e}")
    out.print(f"accuracy: {acc['split']} split, {acc['samples']} samples, {acc['evaluated_with']}")
    out.print(f"latency: {lat['source']}")
    out.print(f"wrote {path}")


@app.command()
def profile(
    artifact: Annotated[Path, typer.Argument(help="Engine file: OpenVINO IR .xml, .onnx or .tflite.")],
    target: Annotated[str | None, typer.Option("--target", "-t", help="Target the engine runs on (default: the device's, else host).")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data for accuracy (default: timing only, synthetic input).")] = None,
    repeats: Annotated[int, typer.Option(help="Timed inferences (at least).")] = 100,
    warmup: Annotated[int, typer.Option(help="Warm-up inferences (at least).")] = 10,
    threads: Annotated[int | None, typer.Option(help="Runtime threads (default: the target's cores).")] = None,
    duration: Duration = 1.0,
    device: DeviceName = None,
    devices: DevicesFile = None,
    targets_dir: TargetsDir = None,
    as_json: JsonOut = False,
) -> None:
    """Measure an engine on the target: latency percentiles, per-layer times, memory (and accuracy with --data)."""
    from edgekit.profile_file import profile_file

    settings = _settings(repeats, warmup, threads, duration)
    with err.status("profiling…"):
        result = profile_file(artifact, target=target, data=data, settings=settings, targets_dir=targets_dir or [],
                              device=device, devices_file=devices)
    if as_json:
        _print_json(result)
        return
    lat = result["latency_ms"]
    out.print(f"{artifact.name} on {result['target']} ({result['backend']}): p50 {lat['p50']:.4f} ms · "
              f"p90 {lat['p90']:.4f} · p99 {lat['p99']:.4f} ms ({lat['kind']}, {lat['samples']} runs, {result['threads']} threads)")
    for layer in sorted(result["layers"], key=lambda x: x["time_ms"], reverse=True)[:10]:
        out.print(f"  {layer['time_ms'] * 1e3:9.1f} µs  {layer['op']:<16} {layer['exec_type']:<22} {layer['name']}")
    if result.get("accuracy"):
        out.print(f"accuracy: {result['accuracy']}")


@fleet_app.command("build")
def fleet_build(
    manifest: Annotated[Path, typer.Argument(help="fleet.yaml: the device classes, their models, data and budgets.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", callback=_folder_or_new,
                                          help="Where the bundles, signatures and OTA artifacts go.")] = Path("dist"),
    executor: Annotated[str, typer.Option(help="local (this machine) or ray (a local Ray instance, or $RAY_ADDRESS).")] = "local",
    jobs: Annotated[int, typer.Option(help="Local builds at once (measured builds need the machine to themselves: keep 1).")] = 1,
    key: Annotated[Path | None, typer.Option("--key", help="ed25519 signing key (default: the fleet's signing_key, made if missing).")] = None,
    cache: Annotated[Path | None, typer.Option("--cache", callback=_folder_or_new,
                                               help="Build cache folder (default: the user cache).")] = None,
    as_json: JsonOut = False,
) -> None:
    """Build every class of the fleet once per distinct build, judge its budgets, bundle, sign, export OTA."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from edgekit.fleet.build import build_fleet
    from edgekit.fleet.cache import BuildCache
    from edgekit.fleet.manifest import load_fleet

    fleet = load_fleet(manifest)
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[name]:<16}[/]"), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=err, transient=False) as progress:
        tasks = {name: progress.add_task("queued", name=name) for name in fleet.classes}

        def update(name: str, what: str) -> None:
            final = what.startswith(("FAILED", "exported", "bundled", "cached"))
            progress.update(tasks[name], description=escape(what), completed=1 if final else 0, total=1)

        summary = build_fleet(fleet, out_dir, executor=executor, jobs=jobs, key_path=key,
                              cache=BuildCache(cache) if cache else None, progress=update)
    if as_json:
        _print_json(summary)
    else:
        table = Table(title=f"edgekit fleet {summary['fleet']} → {out_dir}")
        for col in ("class", "target", "version", "build", "bundle", "OTA"):
            table.add_column(col)
        for name, c in summary["classes"].items():
            ota = ", ".join(k for k, v in c["ota"].items() if not v.startswith("skipped"))
            skipped = [k for k, v in c["ota"].items() if v.startswith("skipped")]
            table.add_row(name, c["target"], c["version"], c["state"] if not c["error"] else f"[red]{escape(c['error'])}[/]",
                          Path(c["bundle"]).name if c["bundle"] else "–",
                          ota + (f" (skipped: {', '.join(skipped)})" if skipped else ""))
        out.print(table)
        what = (f"{summary['built']} built, {summary['cached']} from the cache (nothing changed: not rebuilt)"
                if summary["cached"] else f"{summary['built']} built")
        out.print(f"{what}; signed with {summary['key']} (verify with {summary['public_key']})"
                  + ("; that key was made now: keep it secret" if summary["made_key"] else ""))
    if summary["failed"]:
        sys.stderr.write(f"edgekit: error: {summary['failed']} class(es) failed: "
                         + "; ".join(f"{n}: {c['error']}" for n, c in summary["classes"].items() if c["error"]) + "\n")
        raise typer.Exit(1)


@bundle_app.command("keygen")
def bundle_keygen(
    key: Annotated[Path, typer.Argument(help="Private key file to write (the public key goes to KEY.pub).")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """A new ed25519 signing key pair."""
    from edgekit.fleet.bundle import keygen

    private, public = keygen(key, force=force)
    out.print(f"wrote {private} (private, mode 0600) and {public} (public)")


@bundle_app.command("sign")
def bundle_sign(
    file: Annotated[Path, typer.Argument(help="The bundle (.tar) to sign.")],
    key: Annotated[Path, typer.Option("--key", help="ed25519 private key.")],
) -> None:
    """FILE.sig: a detached ed25519 signature over the whole file (after checking its contents)."""
    from edgekit.fleet.bundle import check_contents, sign

    check_contents(file)
    out.print(f"wrote {sign(file, key)}")


@bundle_app.command("verify")
def bundle_verify(
    file: Annotated[Path, typer.Argument(help="The bundle (.tar); its signature is FILE.sig.")],
    key: Annotated[Path | None, typer.Option("--key", help="Public (or private) ed25519 key.")] = None,
    fleet: Annotated[Path | None, typer.Option("--fleet", help="Use this fleet manifest's signing key.")] = None,
    as_json: JsonOut = False,
) -> None:
    """Check the signature, then every file against manifest.json's sha256; exit 2 if anything differs."""
    from edgekit.errors import BadInput
    from edgekit.fleet.bundle import verify

    if key is None and fleet is None:
        raise BadInput("give the key to verify with: --key KEY.pub, or --fleet fleet.yaml")
    if key is None:
        from edgekit.fleet.manifest import load_fleet

        private = load_fleet(fleet).key_path()
        key = private.with_name(private.name + ".pub") if private.with_name(private.name + ".pub").exists() else private
    manifest = verify(file, key)
    if as_json:
        _print_json(manifest)
        return
    count = len(manifest["files"])
    target = manifest.get("target")
    out.print(f"{file.name}: signature good; {count} file{'s' if count != 1 else ''}, each matching its sha256 "
              f"({manifest.get('class')} {manifest.get('version')} for {target.get('name') if isinstance(target, dict) else target})")


@devices_app.command("list")
def devices_list(devices: DevicesFile = None, as_json: JsonOut = False) -> None:
    """Each device of the inventory, and whether its agent answers (asked once, briefly)."""
    from edgekit.devices import load_inventory, status

    inventory = load_inventory(devices)
    rows = [status(device) for device in inventory.devices]
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"edgekit devices ({inventory.file})")
    for col in ("name", "target", "url", "answers", "host / why not", "runtimes", "queue"):
        table.add_column(col)
    for row in rows:
        runtimes = ", ".join(f"{k} {v}" for k, v in (row.get("runtimes") or {}).items())
        table.add_row(row["name"], row["target"], row["url"], "yes" if row["answers"] else "[red]no[/]",
                      escape(row.get("hostname") or "") if row["answers"] else escape(row["error"]), runtimes,
                      str(row.get("queue", "")))
    out.print(table)


@targets_app.command("list")
def targets_list(targets_dir: TargetsDir = None, as_json: JsonOut = False) -> None:
    """Every known target (shipped and yours)."""
    from edgekit.targets import list_targets

    targets = list_targets(targets_dir or [])
    if as_json:
        _print_json([t.model_dump(mode="json") for t in targets])
        return
    table = Table(title="edgekit targets")
    for col in ("name", "aliases", "vendor", "backend", "precisions (fast)", "peak GOPS"):
        table.add_column(col)
    for t in targets:
        table.add_row(t.name, ", ".join(t.aliases), t.vendor, t.backend.name,
                      f"{', '.join(t.precisions.supported)} ({', '.join(t.precisions.fast)})",
                      ", ".join(f"{p} {v:g}" for p, v in t.peak_gops.items()))
    out.print(table)


@targets_app.command("show")
def targets_show(name: Annotated[str, typer.Argument(help="Target name, alias or YAML file.")],
                 targets_dir: TargetsDir = None, as_json: JsonOut = False) -> None:
    """One target's facts and where each figure comes from."""
    import yaml

    from edgekit.targets import load_target

    data = load_target(name, targets_dir or []).model_dump(mode="json")
    if as_json:
        _print_json(data)
    else:
        out.print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120).rstrip())


@agent_app.command("serve")
def agent_serve(
    token_file: Annotated[Path, typer.Option("--token-file", help="File holding the token clients must send (`edgekit agent token FILE`).")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface, reachable from the network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8700,
    workdir: Annotated[Path, typer.Option(help="Where jobs, their files and results are kept.")] = Path("~/.edgekit/agent"),
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload (all of one job's files) taken, in MiB.")] = 256,
    max_queue: Annotated[int, typer.Option(help="Most jobs waiting at once; more are refused (503) until some have run.")] = 64,
    keep_files: Annotated[int, typer.Option(help="Ended jobs whose files stay downloadable; older ones keep only their state and result.")] = 200,
) -> None:
    """Run the agent on this device until interrupted: jobs from hosts, run one at a time with the local runtimes."""
    from edgekit.agent.server import serve

    serve(host=host, port=port, token_file=token_file, workdir=workdir, max_upload_mb=max_upload_mb, max_queue=max_queue,
          keep_files=keep_files)


@agent_app.command("token")
def agent_token(
    file: Annotated[Path, typer.Argument(help="Where to write the token (mode 0600).")],
    force: Annotated[bool, typer.Option("--force", help="Replace the token in an existing file.")] = False,
) -> None:
    """Write a new random token for `edgekit agent serve --token-file` and its clients."""
    from edgekit.agent.security import new_token_file

    path = new_token_file(file, force=force)
    out.print(f"wrote a new token to {path} (mode 0600)")


def main() -> None:
    try:
        app()
    except EdgekitError as error:
        if STATE["debug"]:
            raise
        sys.stderr.write(f"edgekit: error: {_one_line(str(error))}\n")
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("edgekit: interrupted\n")
        sys.exit(130)
    except Exception as error:  # a bug in edgekit or a runtime: still one line unless --debug
        if STATE["debug"]:
            raise
        sys.stderr.write(f"edgekit: internal error: {type(error).__name__}: {_one_line(str(error))} (rerun with --debug for the traceback)\n")
        sys.exit(1)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:600]
