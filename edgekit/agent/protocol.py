"""What travels between the host and the agent: a job's spec (what to build or measure, with the
sha256 of every file it needs) and its state. Validated on both sides, so a bad request is refused in
one line before anything runs."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgekit.agent.security import safe_name
from edgekit.errors import BadInput
from edgekit.plan import PrecisionPlan
from edgekit.profile import ProfileSettings

# A target name or alias only: a path to a YAML file would read files on the device.
TARGET = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
JOB_ID = re.compile(r"[0-9a-f]{12}-[0-9a-f]{8}")
ENGINE_SUFFIXES = (".xml", ".onnx", ".tflite")
MAX_FILES = 32


class Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JobSettings(Wire):
    """The measurement settings (`edgekit.profile.ProfileSettings`), bounded so one job cannot hold the device for hours."""

    repeats: int = Field(100, ge=1, le=1_000_000)
    warmup: int = Field(10, ge=0, le=100_000)
    warmup_s: float = Field(0.2, ge=0, le=60)
    duration: float = Field(1.0, ge=0, le=600, description="time inferences for at least this many seconds")
    layer_runs: int = Field(20, ge=0, le=10_000)
    threads: int | None = Field(None, ge=1, le=1024)

    def profile_settings(self) -> ProfileSettings:
        return ProfileSettings(warmup=self.warmup, warmup_s=self.warmup_s, repeats=self.repeats,
                               min_time_s=self.duration, layer_runs=self.layer_runs, threads=self.threads)

    @classmethod
    def from_profile_settings(cls, settings: ProfileSettings) -> JobSettings:
        return cls(repeats=settings.repeats, warmup=settings.warmup, warmup_s=settings.warmup_s,
                   duration=settings.min_time_s, layer_runs=settings.layer_runs, threads=settings.threads)


class PlanSpec(Wire):
    """`edgekit.plan.PrecisionPlan` on the wire."""

    default: str = "fp32"
    layers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_precisions(self) -> PlanSpec:
        try:
            PrecisionPlan(self.default, dict(self.layers))
        except BadInput as err:
            raise ValueError(str(err)) from None
        return self


class JobSpec(Wire):
    """profile: measure an engine built elsewhere (`beside`: time it side by side with another, in
    alternating rounds); build: build the engine here from ONNX (+ plan), then measure it; unit: time one
    execution unit of the latency table (an ONNX model of one layer) with the runtime's own profiler."""

    kind: Literal["profile", "build", "unit"]
    target: str = Field(pattern=TARGET)
    files: dict[str, str] = Field(description="file name → sha256 (hex) of every uploaded file")
    artifact: str = Field(description="the engine file to load (profile) or the ONNX to build (build)")
    plan: PlanSpec | None = None
    inputs: str | None = Field(None, description="an uploaded .npz whose arrays are the feed (default: synthetic)")
    beside: str | None = Field(None, description="profile: another uploaded engine to time side by side with the artifact")
    precision: str | None = Field(None, pattern=r"^(fp32|fp16|int8)$", description="unit: the precision it runs in")
    wall: bool = Field(False, description="unit: also the wall-clock p50 (the latency table's overhead models)")
    layer_rounds: int = Field(0, ge=0, le=20, description="profile with beside: per-layer times of both engines, "
                                                          "this many rounds in turn (the sensitivity analysis's noise)")
    dla_core: int | None = Field(None, ge=0, le=15, description="build: for this DLA core (TensorRT targets with DLA)")
    settings: JobSettings = JobSettings()
    client_key: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{8,128}$",
                                   description="the same key again returns the job already made (retries)")

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, str]) -> dict[str, str]:
        if not files or len(files) > MAX_FILES:
            raise ValueError(f"a job takes 1 to {MAX_FILES} files, got {len(files)}")
        for name, digest in files.items():
            try:
                safe_name(name)
            except BadInput as err:
                raise ValueError(str(err)) from None
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"the sha256 of {name} must be 64 lowercase hex digits")
        return files

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.artifact not in self.files:
            raise ValueError(f"artifact '{self.artifact}' is not among the files")
        if self.kind == "build" and not self.artifact.endswith(".onnx"):
            raise ValueError("a build job builds from an .onnx artifact")
        if self.kind == "profile" and not self.artifact.endswith(ENGINE_SUFFIXES):
            raise ValueError(f"a profile job loads an engine file ({' '.join(ENGINE_SUFFIXES)}), not '{self.artifact}'")
        if self.kind == "unit" and (not self.artifact.endswith(".onnx") or self.precision is None):
            raise ValueError("a unit job times an .onnx unit in a given precision")
        if self.beside is not None and (self.kind != "profile" or self.beside not in self.files
                                        or not self.beside.endswith(ENGINE_SUFFIXES) or self.beside == self.artifact):
            raise ValueError(f"beside '{self.beside}' must be another engine file among the files of a profile job")
        if self.kind == "profile" and self.plan is not None:
            raise ValueError("a plan is for build jobs only")
        if self.inputs is not None and (self.inputs not in self.files or not self.inputs.endswith(".npz")):
            raise ValueError(f"inputs '{self.inputs}' must be an .npz among the files")
        if self.target.endswith((".yaml", ".yml")):
            raise ValueError("the target is a name or alias known on the agent, not a file")
        return self


class JobState(Wire):
    id: str
    kind: str
    target: str
    state: Literal["queued", "running", "finished", "failed"]
    error: str | None = None
    created: float
    started: float | None = None
    finished: float | None = None
    client_key: str | None = None
    result: dict | None = None


def one_line_error(err: Exception) -> str:
    """Pydantic's multi-line validation error as one line: the first problem and where it is."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
        except Exception:  # not a pydantic error after all
            first = None
        if first:
            where = ".".join(str(part) for part in first.get("loc", ()))
            message = str(first.get("msg", "")).removeprefix("Value error, ")
            return f"{where}: {message}" if where else message
    return " ".join(str(err).split())[:300]
