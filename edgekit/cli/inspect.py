"""`edgekit inspect`: the layer table of a model's ONNX export, or with --sensitivity each layer's
int8 accuracy loss and latency gain on a target."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from edgekit.cli.console import err, out, print_json
from edgekit.cli.options import (
    CalSamples,
    Duration,
    InputShape,
    JsonOut,
    Method,
    MetricOpt,
    RecipeOpt,
    TargetsDir,
    Threads,
    _folder_or_new,
    options_command,
    profile_settings,
)

# Library modules are imported inside the commands, so that `edgekit --help` loads none of them.


@dataclass(frozen=True, kw_only=True)
class InspectOptions:
    model: Annotated[str | None, typer.Argument(help="Model spec (default: the digits demo).")] = None
    input_shape: InputShape = None
    sensitivity: Annotated[bool, typer.Option("--sensitivity", help="Per layer: int8's accuracy loss (validation split) and "
                                              "latency gain on the target; writes sensitivity.json.")] = False
    target: Annotated[str, typer.Option("--target", "-t", help="Target for --sensitivity.")] = "host"
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data for --sensitivity (default: the demo's digits).")] = None
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", callback=_folder_or_new,
                                                 help="Where --sensitivity writes (default runs/MODEL-TARGET-TIME).")] = None
    backend: Annotated[str | None, typer.Option(help="Measure with this backend instead of the target's.")] = None
    method: Method = "auto"
    calibration_samples: CalSamples = None
    threads: Threads = None
    duration: Duration = 1.0
    metric: MetricOpt = None
    recipe: RecipeOpt = None
    targets_dir: TargetsDir = None
    as_json: JsonOut = False


@options_command(InspectOptions)
def inspect(opts: InspectOptions) -> None:
    """Export to ONNX (checked against the source model) and print the layer table; with
    --sensitivity, each int8-capable layer's accuracy loss and latency gain on the target."""
    if opts.sensitivity:
        _inspect_sensitivity(opts)
        return

    from edgekit import graph
    from edgekit.models import load_model

    loaded = load_model(opts.model, opts.input_shape)
    with tempfile.TemporaryDirectory() as tmp:
        with err.status("exporting to ONNX…"):
            onnx_path = graph.export_onnx(loaded, Path(tmp) / "model.onnx")
            check = graph.check_export(loaded, onnx_path, [loaded.example])
            layers = graph.layer_table(onnx_path)
    if opts.as_json:
        print_json({"model": loaded.spec, "inputs": [str(s) for s in loaded.inputs], "export_check": check.__dict__,
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


def _inspect_sensitivity(opts: InspectOptions) -> None:
    from edgekit.calibrate.run import CalibrationOptions
    from edgekit.deploy import DeployRequest, inspect_sensitivity

    request = DeployRequest(target=opts.target, model=opts.model, data=opts.data, out=opts.out_dir, backend=opts.backend,
                            input_shapes=tuple(opts.input_shape or ()), targets_dir=tuple(opts.targets_dir or ()),
                            calibration=CalibrationOptions(opts.method, samples=opts.calibration_samples),
                            settings=profile_settings(100, 10, opts.threads, opts.duration), metric=opts.metric,
                            recipe=opts.recipe)
    with err.status("starting") as status:
        result, path = inspect_sensitivity(request, step=lambda name: status.update(f"[bold]{name}[/]…"))
    if opts.as_json:
        print_json({**result, "path": str(path)})
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


def _short(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.0f}k" if count >= 1e3 else str(count)
