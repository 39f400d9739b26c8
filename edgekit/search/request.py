"""What `edgekit search` is asked: the budget, the model and data, the strategy and how long it may take."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from edgekit.calibrate.run import CalibrationOptions
from edgekit.errors import BadInput
from edgekit.profile import ProfileSettings
from edgekit.search.moves import MOVES

STRATEGIES = ("greedy", "nsga")
STEP_FINETUNE_S = 5.0  # distillation of each proposal
FINAL_FINETUNE_S = 60.0  # distillation of the chosen candidate before it is built


@dataclass(frozen=True)
class SearchRequest:
    target: str
    latency_budget_ms: float | None = None
    model: str | None = None
    data: str | None = None
    out: Path | None = None
    memory_budget_mb: float | None = None
    flash_budget_mb: float | None = None  # the shipped engine's files, compressed (edgekit.compress.shrink)
    max_accuracy_drop: float = 1.0  # points of validation accuracy below the original model
    strategy: str = "greedy"
    trials: int = 200
    time_limit_s: float = 600.0
    resume: Path | None = None
    storage: str | None = None
    backend: str | None = None
    step_finetune_s: float = STEP_FINETUNE_S
    final_finetune_s: float = FINAL_FINETUNE_S
    calibration: CalibrationOptions = CalibrationOptions()
    settings: ProfileSettings = ProfileSettings()
    targets_dir: tuple[Path, ...] = ()
    device: str | None = None  # measure on this inventory device through its agent (every measurement)
    devices_file: Path | None = None
    speedup: float | None = None  # instead of a budget in ms: at least this many times faster than the original
    metric: str | None = None  # what accuracy means (edgekit.metrics); default: chosen from the data
    moves: tuple[str, ...] = MOVES  # the structural moves the walk may take (NSGA-II samples channel counts)

    def __post_init__(self) -> None:
        unknown = [m for m in self.moves if m not in MOVES]
        if unknown or not self.moves:
            raise BadInput(f"--moves: {', '.join(unknown) or 'none given'} (known: {', '.join(MOVES)})")
        if (self.latency_budget_ms is None) == (self.speedup is None):
            raise BadInput("give the budget as --latency-budget-ms or as --speedup (one of the two)")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise BadInput(f"--latency-budget-ms must be positive, got {self.latency_budget_ms}")
        if self.speedup is not None and not self.speedup > 0:
            raise BadInput(f"--speedup must be positive, got {self.speedup}")
        for option, value in (("--memory-budget-mb", self.memory_budget_mb), ("--flash-budget-mb", self.flash_budget_mb)):
            if value is not None and not value > 0:
                raise BadInput(f"{option} must be positive, got {value}")
        if self.strategy not in STRATEGIES:
            raise BadInput(f"unknown strategy '{self.strategy}' (known: {', '.join(STRATEGIES)})")
        if self.trials < 1 or not self.time_limit_s > 0:
            raise BadInput("--trials and --time-limit must be positive")
        for option, value in (("--finetune", self.final_finetune_s), ("step fine-tuning", self.step_finetune_s)):
            if not 0 <= value < math.inf:
                raise BadInput(f"{option} is seconds of distillation, zero or more; got {value}")
        if not 0 <= self.max_accuracy_drop <= 100:
            raise BadInput(f"--max-accuracy-drop is in points, 0 to 100; got {self.max_accuracy_drop}")
