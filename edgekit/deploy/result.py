"""report.json as one frozen value: `DeployReport`, built once from what `build` made and what `measure`
found, serialised by `as_dict` to the same fields report.json has always had."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.measurer import Measurement
from edgekit.precision.mixed import MixedChoice

# read from the measurement, in this order, where there is one
_MEASURED = ("throughput_fps", "threads", "memory", "layers", "accuracy")


@dataclass(frozen=True)
class DeployReport:
    """What a deploy built and measured. `latency_ms` is the measurement where there is one, else the
    prediction (its `kind` says which); `status` says how far it got and why not further."""

    edgekit: str | None
    created: str
    status: str
    target: dict
    backend: str
    precision: dict  # asked, label, planned; what the runtime executed where it ran here
    model: dict
    data: dict | None
    latency_ms: dict
    predicted_latency_ms: dict
    predicted_memory_mb: dict
    artifacts: dict[str, object]
    versions: dict[str, str]
    run_dir: Path
    metric: dict | None = None
    budget: dict | None = None  # the latency budget and whether it is met (`edgekit.budget`)
    calibration: dict | None = None
    build: dict | None = None  # the backend's notes and the step left to the vendor's tool
    mixed: MixedChoice | None = None
    measurement: Measurement | None = None
    checked_here: dict | None = None  # the accuracy checked on this machine where the engine ran elsewhere
    cost_model_error: float | None = None
    flash: dict | None = None  # the search's: the shipped files' compressed size against --flash-budget-mb
    qat: dict | None = None  # the search's: post-training vs quantization-aware int8 on validation

    @property
    def accuracy(self) -> dict | None:
        """The engine's accuracy on the test split: checked here, else as measured with the engine."""
        if self.checked_here is not None:
            return self.checked_here
        return self.measurement.accuracy if self.measurement is not None else None

    @property
    def met_budget(self) -> bool:
        return self.budget is None or bool(self.budget.get("met", True))

    @property
    def budget_verdict(self) -> str:
        """"met" (also without a budget), "uncertain" (a prediction whose bound crosses it) or "missed"."""
        if self.budget is None:
            return "met"
        return self.budget.get("verdict") or ("met" if self.budget.get("met", True) else "missed")

    def as_dict(self, *, run_dir: bool = False) -> dict:
        """report.json's content (with `run_dir`, also where it is: what `--json` prints)."""
        precision = dict(self.precision)
        if self.mixed is not None:
            precision["mixed"] = self.mixed.as_dict()
        if self.measurement is not None and self.measurement.precision is not None:
            precision.update(self.measurement.precision)
        out = {"edgekit": self.edgekit, "created": self.created, "status": self.status, "target": self.target,
               "backend": self.backend, "precision": precision, "model": self.model, "data": self.data}
        out |= {"metric": self.metric} if self.metric is not None else {}
        out |= {"latency_ms": self.latency_ms, "predicted_latency_ms": self.predicted_latency_ms,
                "predicted_memory_mb": self.predicted_memory_mb, "artifacts": self.artifacts, "versions": self.versions}
        for key in ("budget", "calibration", "build"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.measurement is not None:
            out |= {key: getattr(self.measurement, key) for key in _MEASURED}
            for key in ("side_by_side", "device"):
                if getattr(self.measurement, key) is not None:
                    out[key] = getattr(self.measurement, key)
            out["cost_model_error"] = self.cost_model_error
        if self.checked_here is not None:
            out["accuracy"] = self.checked_here
        for key in ("flash", "qat"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out | ({"run_dir": str(self.run_dir)} if run_dir else {})
