"""What `edgekit deploy` is asked: the request, and the choices made from it before anything is built
(the run directory, the precision plan)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from edgekit.calibrate.run import CalibrationOptions
from edgekit.errors import BadInput
from edgekit.models import LoadedModel
from edgekit.plan import PrecisionPlan
from edgekit.precision import sensitivity
from edgekit.precision.mixed import MIXED
from edgekit.profile import ProfileSettings
from edgekit.targets import Target
from edgekit.user_files import read_yaml


@dataclass(frozen=True)
class DeployRequest:
    target: str
    model: str | None = None
    data: str | None = None
    out: Path | None = None
    precision: str | None = None
    backend: str | None = None
    input_shapes: tuple[str, ...] = ()
    targets_dir: tuple[Path, ...] = ()
    latency_budget_ms: float | None = None
    plan_file: Path | None = None
    measure: bool = True  # False: stop after the build (edgekit calibrate)
    device: str | None = None  # measure on this inventory device, through its agent
    devices_file: Path | None = None  # the inventory (default: $EDGEKIT_DEVICES, else ./devices.yaml)
    calibration: CalibrationOptions = CalibrationOptions()
    settings: ProfileSettings = ProfileSettings()
    metric: str | None = None  # a built-in metric's name or package.module:function (edgekit.metrics)
    max_accuracy_drop: float | None = None  # with int8/mixed: accuracy-aware int8 (edgekit.precision.accuracy_aware), in points
    recipe: Path | None = None  # a data recipe (calibration/*.yaml): data, and model/metric/shapes unless given
    dla: int | None = None  # TensorRT: build for this DLA core (the target's backend option dla_core)

    def __post_init__(self) -> None:
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise BadInput(f"--latency-budget-ms must be positive, got {self.latency_budget_ms}")
        if self.max_accuracy_drop is not None:
            if not 0 <= self.max_accuracy_drop <= 100:
                raise BadInput(f"--max-accuracy-drop is in points, 0 to 100; got {self.max_accuracy_drop}")
            if self.precision not in ("int8", MIXED) or self.plan_file is not None:
                raise BadInput("--max-accuracy-drop without a search makes int8 accuracy-aware: give --precision int8 or "
                               "mixed (and no --plan)")


def searchable(spec: str | None) -> bool:
    """Whether `deploy --latency-budget-ms` can search this model (prune it): PyTorch models (a factory,
    TorchScript, an ExportedProgram, the demo) can, an ONNX file cannot (its budget is only checked)."""
    return spec is None or Path(spec).suffix.lower() != ".onnx"


def searches_first(model: str | None, latency_budget_ms: float | None, flash_budget_mb: float | None, *,
                   search: bool = True) -> bool:
    """The rule `deploy` and fleets share: a latency budget on a PyTorch model is met by the search first
    (unless `search` is off: --no-search only checks it); a flash budget only the search can meet."""
    if latency_budget_ms is not None and search and searchable(model):
        return True
    if flash_budget_mb is not None:
        raise BadInput("a flash budget (--flash-budget-mb) is met by the search, which prunes PyTorch models: give "
                       "--latency-budget-ms too, with a PyTorch model")
    return False


def run_dir_for(request: DeployRequest, model: LoadedModel, target: Target) -> Path:
    """--out, else runs/MODEL-TARGET-TIME; created."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(request.out) if request.out else Path("runs") / f"{model.name}-{target.name}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def choose_precision(asked: str | None, target: Target) -> str:
    if asked is None:
        if target.precisions.default:
            return target.precisions.default
        return "fp32" if "fp32" in target.precisions.supported else target.precisions.fast[0]
    if asked not in target.precisions.supported:
        raise BadInput(f"target {target.name} does not run {asked} (it runs: {', '.join(target.precisions.supported)})")
    return asked


def choose_plan(request: DeployRequest, target: Target) -> PrecisionPlan:
    """The user's plan file, else the --precision default for every layer (mixed: int8 for every
    layer to calibrate, then the sensitivity analysis keeps some in float)."""
    if request.precision == MIXED:
        if request.plan_file is not None:
            raise BadInput("--precision mixed chooses each layer's precision from the sensitivity analysis: leave out --plan")
        sensitivity.check_target(target)
        return PrecisionPlan("int8")
    if request.plan_file is None:
        return PrecisionPlan(default=choose_precision(request.precision, target))
    plan = load_plan(request.plan_file, default=request.precision)
    for precision in {plan.default, *plan.layers.values()}:
        choose_precision(precision, target)
    return plan


def load_plan(path: Path, default: str | None = None) -> PrecisionPlan:
    """A plan file: YAML or JSON, either {layer: precision} or {default: P, layers: {layer: precision}}."""
    data = read_yaml(path, "plan file")
    if not isinstance(data, dict):
        raise BadInput(f"plan file {path}: expected a mapping of layer: precision")
    if "layers" in data:
        layers, plan_default = data.get("layers") or {}, data.get("default", default or "fp32")
    else:
        layers, plan_default = data, default or "fp32"
    if not isinstance(layers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in layers.items()):
        raise BadInput(f"plan file {path}: 'layers' must map layer names to fp32, fp16 or int8")
    return PrecisionPlan(default=plan_default, layers=layers)
