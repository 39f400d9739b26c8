"""The target registry: each device is a YAML file validated into a frozen, typed `Target`.

Targets are data, so users add devices without code (`--targets-dir`, EDGEKIT_TARGETS_PATH). A file
may `extends:` a family file (`_jetson.yaml`) and override a few facts; every figure names its
source, and the `host` target fills its figures from this machine (see `edgekit.host`).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from edgekit.errors import BadInput
from edgekit.plan import FIXED_POINT
from edgekit.user_files import read_yaml

# Floats, and integer widths: int8 everywhere, int4..int16 where a backend builds fixed point (FPGAs).
Precision = Literal[("fp32", "fp16", "bf16", *FIXED_POINT)]
FIGURES = ("peak_gops", "memory_bandwidth_gbs", "ram_mb", "storage_mb", "cores", "alignment")


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BackendSpec(Frozen):
    name: str = Field(description="backend plugin that builds and runs for this device")
    options: dict[str, Any] = Field(default_factory=dict, description="passed to the backend as is")


class Precisions(Frozen):
    supported: tuple[Precision, ...]
    fast: tuple[Precision, ...] = Field(description="precisions with dedicated fast kernels")
    default: Precision | None = Field(None, description="what deploy builds without --precision (None: fp32 if supported)")

    @model_validator(mode="after")
    def _fast_is_supported(self) -> Precisions:
        extra = set(self.fast) - set(self.supported)
        if extra:
            raise ValueError(f"fast lists {sorted(extra)} which are not in supported")
        if self.default is not None and self.default not in self.supported:
            raise ValueError(f"default {self.default} is not in supported")
        return self


class OpLimits(Frozen):
    supported: tuple[str, ...] | None = Field(None, description="ONNX op types the accelerator runs; None = any")
    unsupported: tuple[str, ...] = ()
    int8_only: StrictBool = False
    static_shapes: StrictBool = False
    max_tensor_mb: float | None = None
    notes: str = ""


class Quantization(Frozen):
    """How the runtime wants int8: TensorRT symmetric activations (zero point 0); OpenVINO, ONNX
    Runtime and LiteRT take asymmetric uint8 activations. Weights are per-channel symmetric everywhere."""

    activations: Literal["symmetric", "asymmetric"] = "asymmetric"
    weights: Literal["per_channel_symmetric"] = "per_channel_symmetric"
    activation_matmul: StrictBool = Field(False, description="int8 MatMul of two activations (attention) runs in int8")
    weight_bits: Literal[7, 8] = Field(8, description=(
        "7 on x86 CPUs without VNNI: their u8 x s8 dot product (vpmaddubsw) adds pairs of products into a "
        "saturating int16, which 8-bit weights overflow (255 x 127 x 2 > 32767); ±63 weights never do "
        "(NNCF's overflow fix does the same)"))


class Reach(Frozen):
    kind: Literal["local", "agent"] = "local"
    url: str | None = None


class ReferenceLatency(Frozen):
    """A published measurement of a standard model on this device and runtime: the anchor that a later step
    checks predictions against. `model` is a key of `edgekit.reference_models.REFERENCE_MODELS`."""

    model: str = Field(description="reference model key (edgekit.reference_models), e.g. mobilenet_v2")
    input: str = Field(pattern=r"^1(x[1-9][0-9]*)+$", description="one sample's input shape, e.g. 1x3x224x224")
    batch: int | None = Field(None, gt=0, description="samples per inference call; None where not published")
    precision: Precision
    runtime: str = Field(min_length=1, description="runtime and backend as published, e.g. TensorRT, Edge TPU")
    runtime_version: str | None = None
    value: float = Field(gt=0)
    unit: Literal["ms", "fps"] = Field(description="ms per inference, or inferences (samples) per second")
    which: Literal["p50", "p90", "p99", "mean", "median", "min", "unstated", "throughput"] = Field(
        description="the statistic published: a latency percentile or mean (unstated: the source does not say it), "
                    "or a throughput")
    source: str = Field(min_length=1, description="document title, publisher, and where in it")
    date: str | None = None
    note: str | None = Field(None, description="conditions that matter: clocks, what the time includes, derivations")

    @model_validator(mode="after")
    def _unit_matches(self) -> ReferenceLatency:
        if (self.unit == "fps") != (self.which == "throughput"):
            raise ValueError(f"unit {self.unit} with which {self.which}: a throughput is in fps, a latency in ms")
        return self


class LatencyFloor(Frozen):
    """The least one inference can take with the target's runtime, from published measurements of its overheads:
    a fit on anchors 4 decades larger than a tiny model can predict it faster than the runtime can even start it,
    so predictions never go below this (edgekit.anchored). Without a published figure, `reason` says why."""

    per_inference_ms: float = Field(0.0, ge=0, description="paid once per inference: the call, the final sync")
    per_layer_ms: float = Field(0.0, ge=0, description="paid per compute layer (Conv, Gemm, MatMul): its kernel launch")
    source: str = Field("", description="document title and publisher, and where in it")
    url: str = ""
    date: str | None = None
    note: str = Field("", description="how the figures were read, and carried over to this device")
    reason: str = Field("", description="why there is no figure")

    @model_validator(mode="after")
    def _sourced(self) -> LatencyFloor:
        if self.figured and not (self.source and self.url):
            raise ValueError("a floor's figures need their source and url")
        if not self.figured and not self.reason:
            raise ValueError("a floor without figures needs the reason why")
        return self

    @property
    def figured(self) -> bool:
        return self.per_inference_ms > 0 or self.per_layer_ms > 0

    def ms(self, compute_layers: int) -> float:
        return self.per_inference_ms + self.per_layer_ms * compute_layers


class Target(Frozen):
    name: str
    aliases: tuple[str, ...] = ()
    vendor: str
    device: str
    description: str = ""
    backend: BackendSpec
    precisions: Precisions
    peak_gops: dict[Precision, float] = Field(description="dense peak, giga-ops/s (one MAC = 2 ops)")
    memory_bandwidth_gbs: float = Field(gt=0)
    ram_mb: float = Field(gt=0)
    storage_mb: float = Field(gt=0, description="flash / eMMC / SD available for models")
    cores: int = Field(gt=0, description="CPU cores the runtime may use")
    alignment: dict[Precision, int] = Field(description="channel multiple that keeps kernels efficient")
    ops: OpLimits = OpLimits()
    quantization: Quantization = Quantization()
    reach: Reach = Reach()
    isa: tuple[str, ...] = ()
    sources: dict[str, str]
    reference_latencies: tuple[ReferenceLatency, ...] = Field((), description=(
        "published latencies of standard models on this device (the anchors of its predictions)"))
    reference_latencies_note: str = Field("", description="why there are none, or what they leave out")
    reference_latencies_from: str = Field("", description=(
        "without anchors of its own: the target whose fitted runtime efficiencies its predictions borrow "
        "(the same runtime on a kindred device), their bound widened and said so"))
    latency_floor: LatencyFloor | None = Field(None, description="the least an inference takes with this runtime")
    file: str = Field("", description="where this target was loaded from")

    @model_validator(mode="after")
    def _consistent(self) -> Target:
        for figure in ("peak_gops", "alignment"):
            table = getattr(self, figure)
            missing = [p for p in self.precisions.supported if p not in table]
            if missing:
                raise ValueError(f"{figure} has no entry for supported precision(s) {missing}")
            if any(v <= 0 for v in table.values()):
                raise ValueError(f"{figure} values must be positive")
        keys = [f"peak_gops.{p}" for p in self.peak_gops] + [f for f in FIGURES if f != "peak_gops"]
        unsourced = [k for k in keys if k not in self.sources and k.split(".")[0] not in self.sources]
        if unsourced:
            raise ValueError(f"sources has no entry for {unsourced}")
        return self

    def peak_ops_per_s(self, precision: str) -> float:
        """Peak rate for a precision; unsupported precisions fall back to fp32's rate."""
        return 1e9 * self.peak_gops.get(precision, self.peak_gops.get("fp32", min(self.peak_gops.values())))

    @property
    def float_baseline(self) -> str | None:
        """The float precision a user would ship here, which int8 and mixed plans are compared against and
        layers kept out of int8 run in: fp16 on a GPU that runs it fast (a Jetson's TensorRT engine is
        fp16, not fp32), else fp32 where the target runs it, else fp16; None if it runs no float."""
        supported = self.precisions.supported
        if str(self.backend.options.get("device", "")).lower() == "gpu" and "fp16" in self.precisions.fast:
            return "fp16"
        return next((p for p in ("fp32", "fp16") if p in supported), None)

    @property
    def local(self) -> bool:
        return self.reach.kind == "local"


def shipped_dir() -> Path:
    """The targets shipped with edgekit: inside the wheel, or the repository's targets/."""
    packaged = Path(__file__).parent / "_shipped" / "targets"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "targets"


def search_dirs(extra: list[Path] | None = None) -> list[Path]:
    """User dirs first (they override shipped targets of the same name), then the shipped ones."""
    dirs = [Path(d) for d in (extra or [])]
    env = os.environ.get("EDGEKIT_TARGETS_PATH", "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    for d in dirs:
        if not d.is_dir():
            raise BadInput(f"targets directory not found: {d}")
    return dirs + [shipped_dir()]


def _read_yaml(path: Path) -> dict:
    data = read_yaml(path, "target file")
    if not isinstance(data, dict):
        raise BadInput(f"{path}: a target file must be a mapping of fields, got {type(data).__name__}")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _resolve(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a file and the family files it `extends:` (searched beside it)."""
    if path in seen:
        raise BadInput(f"{path}: 'extends' loops back to itself")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = path.parent / f"{parent}.yaml"
    if not parent_path.is_file():
        raise BadInput(f"{path}: field 'extends': no family file {parent_path.name} beside it")
    return _merge(_resolve(parent_path, (*seen, path)), data)


def _validate(path: Path, data: dict) -> Target:
    detect = data.pop("detect", False)
    if not isinstance(detect, bool):  # read before the schema (it adds figures): strict like its StrictBool fields
        raise BadInput(f"{path}: field 'detect': true or false, not {detect!r}")
    if detect:
        from edgekit.host import detect_host_figures  # numpy: only for a target detecting the host

        # detection fills the machine's figures; precisions the file states stay (a host limited to fp32)
        stated = data.get("precisions")
        data = _merge(data, detect_host_figures())
        if stated is not None:
            data["precisions"] = stated
    try:
        return Target.model_validate({**data, "file": str(path)})
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise BadInput(f"{path}: field '{field}': {first['msg']}") from err


@cache
def _load_file(path: Path) -> Target:
    return _validate(path, _resolve(path))


def _files(dirs: list[Path]) -> dict[str, Path]:
    """name → file, the first directory winning; `_family.yaml` files are not targets."""
    found: dict[str, Path] = {}
    for d in dirs:
        for path in sorted(d.glob("*.yaml")):
            if not path.name.startswith("_"):
                found.setdefault(path.stem, path)
    return found


def list_targets(targets_dir: list[Path] | None = None) -> list[Target]:
    return [_load_file(p) for p in _files(search_dirs(targets_dir)).values()]


def load_target(name: str, targets_dir: list[Path] | None = None) -> Target:
    """A target by name, alias, or path to a YAML file."""
    as_path = Path(name)
    if name.endswith((".yaml", ".yml")):
        if not as_path.is_file():
            raise BadInput(f"target file not found: {name}")
        return _load_file(as_path.resolve())
    files = _files(search_dirs(targets_dir))
    if name in files:
        return _load_file(files[name])
    for path in files.values():
        aliases = _read_yaml(path).get("aliases") or []
        if name in aliases:
            return _load_file(path)
    known = ", ".join(sorted(files))
    raise BadInput(f"unknown target '{name}' (known: {known}; or pass a .yaml file)")
