"""What the commands share: option types, the output-folder check, and options objects.

Typer reads a command's options from its parameters; a command with more options than a function
should take gets one frozen dataclass instead, whose fields are the options, in --help's order:
`Annotated[T, typer.Option(...)] = default`. `options_command` shows Typer those fields as keyword
parameters and calls the command with the dataclass they fill. The names in a field's annotation
must be importable when the module runs (not only under TYPE_CHECKING): Typer resolves them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

# Library modules are imported inside the functions, so that `edgekit --help` loads none of them.

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
TargetName = Annotated[str, typer.Option("--target", "-t", help="Target name, alias or YAML file.")]
Threads = Annotated[int | None, typer.Option(help="Runtime threads (default: the target's cores).")]
BuildBackend = Annotated[str | None, typer.Option(help="Build with this backend instead of the target's.")]


def _folder_or_new(param: typer.CallbackParam, path: Path | None) -> Path | None:
    """--out (or --cache) names a folder to write into, made if missing: a file there, or a folder that
    cannot be written, is one line before any work, not a crash after it."""
    if path is None:
        return None
    from edgekit.user_files import check_folder

    check_folder(path, param.opts[0] if param.opts else f"--{param.name}")
    return path


Options = TypeVar("Options")


def options_command(cls: type[Options]) -> Callable[[Callable[[Options], None]], Callable[..., None]]:
    """The command, as Typer sees it, takes each field of the dataclass `cls` as a keyword parameter:
    Typer reads inspect.signature (which stops at __signature__) and typing.get_type_hints (which reads
    __annotations__), so both are given the fields' resolved annotations and defaults."""
    hints = typing.get_type_hints(cls, include_extras=True)  # strings under `from __future__ import annotations`
    params = [inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[field.name],
                                default=inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default)
              for field in dataclasses.fields(cls)]

    def decorate(func: Callable[[Options], None]) -> Callable[..., None]:
        @functools.wraps(func)  # the name is the command's, the docstring its help
        def command(**values: Any) -> None:
            return func(cls(**values))

        command.__signature__ = inspect.Signature(params, return_annotation=None)
        command.__annotations__ = {param.name: param.annotation for param in params} | {"return": None}
        return command

    return decorate


def profile_settings(repeats: int, warmup: int, threads: int | None, duration: float):
    from edgekit.profile import ProfileSettings

    return ProfileSettings(repeats=repeats, warmup=warmup, threads=threads, min_time_s=duration)
