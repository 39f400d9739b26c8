"""`edgekit deploy`, `search` and `calibrate`: a model built for a target (searched first to meet a
budget, or only calibrated), and their summaries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from edgekit.cli.console import err, exit_on_missed_budget, out, print_json
from edgekit.cli.options import (
    BiasCorrection,
    BuildBackend,
    CalSamples,
    DeviceName,
    DevicesFile,
    Duration,
    Equalization,
    InputShape,
    JsonOut,
    Method,
    MetricOpt,
    Percentile,
    PlanFile,
    RecipeOpt,
    TargetName,
    TargetsDir,
    Threads,
    _folder_or_new,
    options_command,
    profile_settings,
)
from edgekit.errors import BadInput

# Library modules are imported inside the commands, so that `edgekit --help` loads none of them.

if TYPE_CHECKING:
    from edgekit.search.result import SearchResult


@dataclass(frozen=True, kw_only=True)
class DeployOptions:
    target: TargetName
    model: Annotated[str | None, typer.Option("--model", "-m", help=".onnx, .pt/.ts, .pt2 or pkg.module:factory (default: the digits demo).")] = None
    data: Annotated[str | None, typer.Option("--data", "-d", help=".npz, a folder of .npy or images, or pkg.module:factory.")] = None
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", callback=_folder_or_new,
                                                 help="Run directory (default runs/MODEL-TARGET-TIME).")] = None
    precision: Annotated[str | None, typer.Option(help="fp32, fp16 or int8 for every layer, or mixed: int8 where the sensitivity analysis "
                                                       "finds it harmless and faster, never slower than fp32 (default: fp32 where the target runs it).")] = None
    plan: PlanFile = None
    method: Method = "auto"
    percentile: Percentile = 99.99
    calibration_samples: CalSamples = None
    bias_correction: BiasCorrection = True
    equalization: Equalization = "auto"
    backend: BuildBackend = None
    latency_budget_ms: Annotated[float | None, typer.Option(help="p50 latency to meet, in ms: a PyTorch model is searched "
                                                                 "(pruned and quantized) to meet it first; otherwise say whether it is met.")] = None
    search_first: Annotated[bool, typer.Option("--search/--no-search", help="With --latency-budget-ms: run the search first (PyTorch models).")] = True
    max_accuracy_drop: Annotated[float | None, typer.Option(help="Largest loss of the metric allowed, in points: with the search "
                                                                 "(default 1), or with --precision int8|mixed: accuracy-aware int8.")] = None
    flash_budget_mb: Annotated[float | None, typer.Option(help="With the search: the shipped files, compressed, must fit in this many MB.")] = None
    time_limit: Annotated[float, typer.Option("--time-limit", help="With the search: stop walking after this many seconds.")] = 600.0
    repeats: Annotated[int, typer.Option(help="Timed inferences (at least; and at least 1 s).")] = 100
    warmup: Annotated[int, typer.Option(help="Warm-up inferences (at least; and at least 200 ms).")] = 10
    threads: Threads = None
    duration: Duration = 1.0
    input_shape: InputShape = None
    metric: MetricOpt = None
    recipe: RecipeOpt = None
    device: DeviceName = None
    devices: DevicesFile = None
    dla: Annotated[int | None, typer.Option("--dla", help="TensorRT: build for this DLA core (targets with DLA); layers it cannot run fall back to the GPU.")] = None
    targets_dir: TargetsDir = None
    as_json: JsonOut = False


@dataclass(frozen=True, kw_only=True)
class SearchOptions:
    target: TargetName
    latency_budget_ms: Annotated[float | None, typer.Option(help="p50 latency the model must meet on the target, in ms.")] = None
    speedup: Annotated[float | None, typer.Option(help="Instead of --latency-budget-ms: at least this many times faster than "
                                                       "the original float model, timed side by side on the device.")] = None
    model: Annotated[str | None, typer.Option("--model", "-m", help="PyTorch model: pkg.module:factory, .pt/.ts or .pt2 (default: the digits demo).")] = None
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data: split into calibration, validation and test.")] = None
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", callback=_folder_or_new,
                                                 help="Run directory (default runs/MODEL-TARGET-search-TIME).")] = None
    memory_budget_mb: Annotated[float | None, typer.Option(help="Weights + peak activations must fit in this many MB.")] = None
    flash_budget_mb: Annotated[float | None, typer.Option(help="The shipped engine's files, compressed, must fit in this many MB "
                                                               "(sparsity and weight sharing, measured).")] = None
    max_accuracy_drop: Annotated[float, typer.Option(help="Largest validation accuracy loss allowed, in points.")] = 1.0
    strategy: Annotated[str, typer.Option(help="greedy (NetAdapt-style, default) or nsga (Optuna NSGA-II).")] = "greedy"
    moves: Annotated[str, typer.Option(help="Structural moves the walk may take, comma-separated: prune (channels, "
                                            "heads, FFN widths), drop (whole blocks), rank (low-rank layers).")] = "prune,drop,rank"
    trials: Annotated[int, typer.Option(help="Evaluate at most this many candidates.")] = 200
    time_limit: Annotated[float, typer.Option("--time-limit", help="Stop walking after this many seconds.")] = 600.0
    resume: Annotated[Path | None, typer.Option(help="Continue the search in this run directory.")] = None
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default: SQLite in the run directory).")] = None
    finetune: Annotated[float, typer.Option("--finetune", help="Seconds of distillation for the chosen candidate (up to 3× that where the time limit leaves room).")] = 60.0
    backend: BuildBackend = None
    method: Method = "auto"
    threads: Threads = None
    repeats: Annotated[int, typer.Option(help="Timed inferences per measurement (at least; and at least --duration s).")] = 100
    duration: Duration = 1.0
    metric: MetricOpt = None
    device: DeviceName = None
    devices: DevicesFile = None
    targets_dir: TargetsDir = None
    as_json: JsonOut = False


@dataclass(frozen=True, kw_only=True)
class CalibrateOptions:
    target: TargetName
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model spec (default: the digits demo).")] = None
    data: Annotated[str | None, typer.Option("--data", "-d", help="Calibration data (default: the demo's digits).")] = None
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", callback=_folder_or_new,
                                                 help="Run directory (default runs/MODEL-TARGET-TIME).")] = None
    precision: Annotated[str, typer.Option(help="int8 (every layer the plan allows) or mixed (the sensitivity analysis decides).")] = "int8"
    plan: PlanFile = None
    method: Method = "auto"
    percentile: Percentile = 99.99
    calibration_samples: CalSamples = None
    bias_correction: BiasCorrection = True
    equalization: Equalization = "auto"
    input_shape: InputShape = None
    metric: MetricOpt = None
    recipe: RecipeOpt = None
    max_accuracy_drop: Annotated[float | None, typer.Option(help="Accuracy-aware int8: the fastest plan within this loss of "
                                                                 "the metric, in points (each step built and timed here).")] = None
    targets_dir: TargetsDir = None
    as_json: JsonOut = False


def _calibration(opts: DeployOptions | CalibrateOptions):
    from edgekit.calibrate.run import CalibrationOptions

    return CalibrationOptions(opts.method, opts.percentile, opts.calibration_samples, opts.bias_correction, opts.equalization)


@options_command(DeployOptions)
def deploy(opts: DeployOptions) -> None:
    """Load → export → build → profile → report, on the target's own runtime; with a latency budget,
    the search (`edgekit search`) finds the model to build first."""
    from edgekit.deploy import DeployRequest, searches_first
    from edgekit.deploy import deploy as run_deploy

    if searches_first(opts.model, opts.latency_budget_ms, opts.flash_budget_mb, search=opts.search_first):
        if opts.precision is not None or opts.plan is not None:
            raise BadInput("with --latency-budget-ms the search chooses each layer's precision: "
                           "drop --precision/--plan, or pass --no-search to only check the budget")
        _search(SearchOptions(
            target=opts.target, latency_budget_ms=opts.latency_budget_ms, model=opts.model, data=opts.data, out_dir=opts.out_dir,
            max_accuracy_drop=1.0 if opts.max_accuracy_drop is None else opts.max_accuracy_drop,
            flash_budget_mb=opts.flash_budget_mb, time_limit=opts.time_limit, backend=opts.backend, method=opts.method,
            device=opts.device, devices=opts.devices, metric=opts.metric, threads=opts.threads, repeats=opts.repeats,
            duration=opts.duration, targets_dir=opts.targets_dir, as_json=opts.as_json))
        return
    request = DeployRequest(target=opts.target, model=opts.model, data=opts.data, out=opts.out_dir, precision=opts.precision,
                            backend=opts.backend, input_shapes=tuple(opts.input_shape or ()),
                            targets_dir=tuple(opts.targets_dir or ()), latency_budget_ms=opts.latency_budget_ms,
                            plan_file=opts.plan, device=opts.device, devices_file=opts.devices, calibration=_calibration(opts),
                            settings=profile_settings(opts.repeats, opts.warmup, opts.threads, opts.duration),
                            metric=opts.metric, max_accuracy_drop=opts.max_accuracy_drop, recipe=opts.recipe, dla=opts.dla)
    with err.status("starting") as status:
        report = run_deploy(request, step=lambda name: status.update(f"[bold]{name}[/]…"))
    if opts.as_json:
        print_json(report.as_dict(run_dir=True))
    else:
        _print_summary(report.as_dict(run_dir=True))
    exit_on_missed_budget(report.budget_verdict)


@options_command(SearchOptions)
def search(opts: SearchOptions) -> None:
    """The most accurate pruned and quantized model that meets the budget, measured on the device."""
    _search(opts)


def _search(opts: SearchOptions) -> None:
    """`edgekit search`, and `edgekit deploy` with a latency budget."""
    from edgekit.calibrate.run import CalibrationOptions
    from edgekit.profile import ProfileSettings
    from edgekit.search.loop import SearchRequest
    from edgekit.search.loop import search as run_search

    request = SearchRequest(target=opts.target, latency_budget_ms=opts.latency_budget_ms, speedup=opts.speedup, model=opts.model,
                            data=opts.data, out=opts.out_dir, memory_budget_mb=opts.memory_budget_mb,
                            flash_budget_mb=opts.flash_budget_mb, max_accuracy_drop=opts.max_accuracy_drop, strategy=opts.strategy,
                            moves=tuple(m.strip() for m in opts.moves.split(",") if m.strip()), trials=opts.trials,
                            time_limit_s=opts.time_limit, resume=opts.resume, storage=opts.storage, backend=opts.backend,
                            final_finetune_s=opts.finetune, calibration=CalibrationOptions(opts.method),
                            settings=profile_settings(opts.repeats, ProfileSettings.warmup, opts.threads, opts.duration),
                            targets_dir=tuple(opts.targets_dir or ()),
                            device=opts.device, devices_file=opts.devices, metric=opts.metric)
    with err.status("starting") as status:
        result = run_search(request, progress=lambda line: (status.update(f"[bold]{line}[/]…"), err.print(f"  {line}")))
    if opts.as_json:
        print_json(result.as_dict())
    else:
        _print_search(result)
    exit_on_missed_budget(result.budget.verdict)


@options_command(CalibrateOptions)
def calibrate(opts: CalibrateOptions) -> None:
    """Int8 scales on the calibration split, written in the target runtime's own form (Q/DQ ONNX,
    OpenVINO int8 IR, TensorRT calibration cache + layer precisions) and scales.json."""
    from edgekit.deploy import DeployRequest
    from edgekit.deploy import deploy as run_deploy

    if opts.precision not in ("int8", "mixed"):
        raise BadInput(f"edgekit calibrate --precision takes int8 or mixed, not '{opts.precision}'")
    request = DeployRequest(target=opts.target, model=opts.model, data=opts.data, out=opts.out_dir, precision=opts.precision,
                            plan_file=opts.plan, input_shapes=tuple(opts.input_shape or ()),
                            targets_dir=tuple(opts.targets_dir or ()), measure=False, calibration=_calibration(opts),
                            metric=opts.metric, max_accuracy_drop=opts.max_accuracy_drop, recipe=opts.recipe)
    with err.status("starting") as status:
        report = run_deploy(request, step=lambda name: status.update(f"[bold]{name}[/]…"))
    if opts.as_json:
        print_json(report.as_dict(run_dir=True))
        return
    cal = report.calibration
    out.print(f"calibrated {report.model['name']} for {report.target['name']}: {cal['int8_layers']} int8 layer(s), "
              f"method {cal['method']}, {cal['samples']} samples, {cal['seconds']} s")
    for layer, why in cal["demoted"].items():
        out.print(f"  kept float: {layer}: {why}")
    if report.mixed is not None:
        out.print(f"mixed: {_mixed_line(report.mixed.as_dict())}")
    _print_warnings(report.as_dict())
    for name, path in report.artifacts.items():
        if isinstance(path, str):
            out.print(f"  {name:<26} {report.run_dir / path}")
    out.print(f"status: {report.status}")


def _move_text(move: dict) -> str:
    if move["kind"] == "drop":
        return f"{move['block']} dropped"
    if move["kind"] == "rank":
        return f"{move['layer']} rank {move['rank']}"
    if move["kind"] == "heads":
        return f"{move['group']} {move['heads']['to']}/{move['heads']['from']} heads"
    return f"{move['group']} {move['to']}/{move['from']}"


def _print_search(result: SearchResult) -> None:
    b, lat, acc = result.budget, result.latency, result.accuracy
    table = Table(title=f"edgekit search → {result.target} ({result.backend})", box=box.SQUARE, show_header=False)
    speedup = f" ({b.speedup:g}× faster than the original)" if b.speedup else ""
    table.add_row("budget", f"{b.latency_ms:.4g} ms{speedup}: {_verdict_words(b.verdict, b.latency.high)} ({b.judged_on})")
    table.add_row("latency", f"{lat.predicted:.3f} ms predicted" +
                  (f" · {lat.judged_ms:.3f} ms judged on the device" if lat.judged_ms is not None
                   else " (not measured: the device is not here)"))
    if lat.side_by_side:
        side = lat.side_by_side
        table.add_row("judged how", f"{side['ratio']:.3f}× the original timed beside it × its {lat.original_ms:.3f} ms at the start "
                      f"(raw p50 {side['raw_p50_ms']:.3f} ms, original now {side['original_now_ms']:.3f} ms)")
    if lat.measured_p50 is not None:
        table.add_row("measured", f"p50 {lat.measured_p50:.3f} ms (the candidate timed in its own report)")
    if acc.test is not None:
        name = result.metric.get("name", "accuracy")
        table.add_row(f"{name} (test)", f"{acc.test:.4f}  (original {acc.test_original:.4f}, drop {acc.test_drop_pt:+.2f} pt)")
    if result.flash:
        f = result.flash
        table.add_row("flash (measured)", f"{f['compressed_mb']:.3f} MB compressed of {f['raw_mb']:.3f} MB, budget {f['budget_mb']} MB: "
                      f"{'met' if f['met'] else 'MISSED'}; sparsity {f['action']['sparsity']:.0%}"
                      + (f", {f['action']['clusters']} shared values per layer" if f["action"]["clusters"] else ""))
    table.add_row("moves", ", ".join(_move_text(m) for m in result.chosen.moves) or "none")
    table.add_row("precision", _precision_counts(result.chosen.precision or {}))
    for r in result.rounds:
        judged = f"{r.judged_ms:.3f} ms judged" if r.judged_ms is not None else "not measured"
        error = f", cost model {r.cost_model_error:+.1%}" if r.cost_model_error is not None else ""
        table.add_row("round", f"walked to {r.walk_budget_ms:.3f} ms ({r.stopped}): {r.predicted_ms:.3f} ms predicted, {judged}{error}")
    table.add_row("trials", f"{result.trials} in {result.seconds} s")
    table.add_row("run directory", result.chosen.run_dir)
    out.print(table)
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")


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
    spread = (f" · p90 {lat['p90']:.3f} · p99 {lat['p99']:.3f} · {lat['samples']} runs" if lat["kind"] == "measured" else
              f" (bound {lat['low']:.3g}-{lat['high']:.3g} ms)" if lat.get("high") is not None else " (no bound: a floor)")
    table.add_row(f"latency ({lat['kind']})", f"p50 {lat['p50']:.3f} ms{spread}")
    if report.get("device"):
        dev = report["device"]
        table.add_row("measured on", f"device {dev['name']} ({dev['target']}, {dev.get('hostname', '?')}) through its agent at {dev['url']}")
    if lat["kind"] == "measured":
        table.add_row("latency (predicted)", f"{report['predicted_latency_ms']['p50']:.3f} ms (before measuring)")
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
        verdict = b.get("verdict") or ("met" if b["met"] else "missed")
        table.add_row("budget", f"{b['latency_ms']} ms: {_verdict_words(verdict, report['latency_ms'].get('high'))} "
                                f"({b['judged_on']})")
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


def _precision_counts(planned: dict[str, str]) -> str:
    """'3 of 5 layers int8', or per width where a fixed-point plan mixes them: '2 int12, 3 int8 of 5 layers'."""
    counts = {p: sum(v == p for v in planned.values()) for p in sorted(set(planned.values()))}
    if set(counts) <= {"int8", "fp32", "fp16"}:
        return f"{counts.get('int8', 0)} of {len(planned)} layers int8"
    return ", ".join(f"{n} {p}" for p, n in sorted(counts.items(), key=lambda kv: kv[0])) + f" of {len(planned)} layers"


def _verdict_words(verdict: str, high: float | None) -> str:
    """met / MISSED / UNCERTAIN (with the upper bound that crosses the budget)."""
    if verdict == "uncertain":
        return "UNCERTAIN (" + (f"upper bound {high:.4g} ms" if high is not None else "a prediction without a bound") + ")"
    return "met" if verdict == "met" else "MISSED"
