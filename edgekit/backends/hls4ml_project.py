"""The hls4ml project edgekit writes: hls4ml's config filled in, converted, folded to fit, and the
notes the report shows. Kept apart from the backend class, which only sequences the steps.
`DesignEstimator` is the same conversion without a build: what the fixed-point search prices with."""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import replace
from pathlib import Path

import yaml

from edgekit.backends.hls4ml_config import configure, fit_bram
from edgekit.backends.hls4ml_estimate import estimate, summary
from edgekit.backends.hls4ml_graph import Prepared
from edgekit.errors import BadInput, Failure, require
from edgekit.latency import Latency
from edgekit.targets import Target

PROJECT = "hls4ml"  # the project folder, beside the manifest
PROJECT_NAME = "edgekit_model"  # the HLS top function
MAX_FOLDS = 64  # conversions tried while raising reuse factors to fit the BRAM


def hls4ml_module():
    """hls4ml, imported (MissingRuntime naming edgekit's fpga extra where it is not installed)."""
    hls4ml = require("hls4ml", "fpga")
    _reuse_factors_kept()
    return hls4ml


def _reuse_factors_kept() -> None:
    """hls4ml's `FPGABackend.get_valid_reuse_factors(n_in, n_out)` tries every reuse factor up to
    n_in·n_out (a few ms per conv layer, for every layer of every conversion: more than half of a
    fixed-point search's time went there). Its answer depends on the backend class and the two counts
    alone, so it is computed once per process; callers get their own copy (hls4ml pops from it)."""
    from hls4ml.backends.fpga.fpga_backend import FPGABackend

    original = FPGABackend.get_valid_reuse_factors
    if getattr(original, "_edgekit_kept", False):
        return

    @functools.lru_cache(maxsize=4096)
    def valid(backend_class, n_in: int, n_out: int) -> tuple[int, ...]:
        return tuple(original(backend_class.__new__(backend_class), n_in, n_out))

    def get_valid_reuse_factors(self, n_in, n_out):
        return list(valid(type(self), int(n_in), int(n_out)))

    get_valid_reuse_factors._edgekit_kept = True
    FPGABackend.get_valid_reuse_factors = get_valid_reuse_factors


@contextlib.contextmanager
def quiet(log: Path | None = None):
    """hls4ml prints its progress on stdout, which `--json` owns: keep it in a log instead."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        if log is not None:
            with open(log, "a") as handle:
                handle.write(buffer.getvalue())


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def portable_config(project: Path) -> None:
    """hls4ml writes the PyTorch module into hls4ml_config.yml as a pickled Python object, which its own
    `link_existing_project` (yaml.safe_load) cannot read back: keep every plain setting, drop the module."""
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    path = project / "hls4ml_config.yml"
    config = yaml.load(path.read_text(), Loader=Loader)
    config["PytorchModel"] = None  # the source module is the model edgekit deployed (report.json names it)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def convert(hls4ml, prepared: Prepared, width: int, target: Target, project: Path, log: Path,
            widths: dict[str, int] | None = None):
    """hls4ml's config filled by edgekit (formats, reuse), converted; folded further while the BRAM
    estimate overflows (converting takes well under a second; only the final model is compiled)."""
    options = target.backend.options
    shapes = [tuple(s) for s in prepared.input_shapes]
    try:
        with quiet(log):
            config = hls4ml.utils.config_from_pytorch_model(
                prepared.module, shapes[0] if len(shapes) == 1 else shapes, granularity="name", backend="Vitis",
                channels_last_conversion="internal", default_reuse_factor=1)
            config["Model"]["Strategy"] = "Resource"
            config["InputShape"] = [list(s) for s in shapes]  # lists: hls4ml_config.yml must load with safe_load
            choices = configure(config, prepared, width, int(options.get("dsp", 0)) or 1_000_000,
                                int(options.get("macs_per_dsp", 1)), widths)
            for _ in range(MAX_FOLDS):
                hls_model = hls4ml.converters.convert_from_pytorch_model(
                    prepared.module, output_dir=str(project), project_name=PROJECT_NAME, backend="Vitis",
                    io_type=options.get("io_type", "io_stream"), part=options.get("part"),
                    clock_period=round(1e3 / float(options.get("clock_mhz", 200)), 3), hls_config=config)
                est = estimate(hls_model, options, target.device)
                if not fit_bram(config, est):
                    break
    except BadInput:
        raise
    except Exception as err:
        raise Failure(f"hls4ml {hls4ml.__version__} could not convert the model: {first_line(err)} (log: {log})") from err
    return hls_model, [replace(c, reuse=config["LayerName"][c.name].get("ReuseFactor", 1)) for c in choices], est


class DesignEstimator:
    """edgekit's estimate of the hls4ml design (hls4ml_estimate) of a prepared module: converted with the
    config the build writes (reuse factors from the DSP budget, folded until the BRAM fits) in a scratch
    project under `folder`, nothing compiled."""

    def __init__(self, target: Target, folder: Path) -> None:
        self.hls4ml = hls4ml_module()  # MissingRuntime here, not at the first estimate
        self.target, self.folder = target, Path(folder)

    def estimate(self, prepared: Prepared, widths: dict[str, int]) -> dict:
        """The estimate (hls4ml_estimate.estimate's dict) with the multiplying layers in `widths` (bits)."""
        _, _, est = convert(self.hls4ml, prepared, max(widths.values()), self.target, self.folder / "project",
                            self.folder / "convert.log", widths)
        return est


def notes(version: str, width: int, choices, prepared: Prepared, est: dict, samples: int) -> dict:
    """What report.json shows under "build"; `summary` lines are printed by the CLI."""
    return {
        "hls4ml": version, "project": PROJECT, "estimate_file": "hls4ml_estimate.json",
        "fixed_point": {"width": width, "widths": _widths(choices), "activations": "ap_[u]fixed<W,I>, I from the calibration split's ranges",
                        "weights": "ap_fixed<W,I>, I from each layer's largest |weight|",
                        "accumulators": "exact: product bits + ceil(log2(fan-in)) guard bits (+1 for the bias)",
                        "rounding": "AP_RND_CONV (to nearest, ties to even), AP_SAT (saturate)"},
        "layers": [c.__dict__ for c in choices],
        "rewrites": prepared.rewrites,
        "ranges": f"observed on the calibration split ({samples} samples, the split edgekit's "
                  "int8 scales come from); hls4ml converts the PyTorch module, not the Q/DQ ONNX",
        "estimate": {k: est[k] for k in ("used", "capacity", "percent", "fits", "latency_ms", "interval_cycles", "clock_mhz")},
        "predicted_latency_ms": Latency.predicted(est["latency_ms"], f"edgekit's estimate of the hls4ml design at {est['clock_mhz']:.0f} MHz "
                                                  "(cycles per layer, layers not overlapped)").as_dict(),
        "per_layer_times": "none measured: a C simulation has no per-layer timer (predicted cycles per layer: hls4ml_estimate.json)",
        "summary": [f"hls4ml {version}: {len(choices)} layers in {_widths(choices)}-bit fixed point, "
                    f"{sum(1 for c in choices if c.n_in)} with multipliers (reuse {', '.join(str(c.reuse) for c in choices if c.n_in)})",
                    *prepared.rewrites, *summary(est)],
    }


def _widths(choices) -> str:
    """The multiplying layers' widths: '8', or '16, 8, 6' where the plan mixes them."""
    used = [int(c.result.split("<")[1].split(",")[0]) for c in choices if c.n_in]
    return str(used[0]) if len(set(used)) == 1 else ", ".join(map(str, used))
