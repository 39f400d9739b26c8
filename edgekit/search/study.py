"""Search trials kept in Optuna storage, so a killed search resumes where it stopped.

Every candidate the search evaluates is one Optuna trial: objectives (predicted or measured latency
in ms, to minimise; validation accuracy, to maximise) and, as user attributes, the candidate itself and
everything the report needs. The storage is SQLite in the run directory unless `--storage` names
another Optuna storage URL (only SQLite is tested). A trial is written when it
finishes, so kill -9 loses at most the trial that was running; on resume that trial is marked failed
and the strategy, which is deterministic given its evaluations, replays the finished ones from storage.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import BadInput, require

STUDY_NAME = "edgekit-search"
DB_FILE = "search.db"
SCHEMA_RETRIES = 5


@dataclass
class Evaluation:
    """What the search knows about one candidate."""

    key: str
    candidate: dict
    latency_ms: float
    latency_kind: str  # measured | predicted
    accuracy: float  # validation split (never the test split)
    attrs: dict = field(default_factory=dict)  # step, action, fine-tuned, memory, cost-model error, …
    number: int | None = None  # the Optuna trial number


def storage_url(run_dir: Path, storage: str | None = None) -> str:
    return storage or f"sqlite:///{(Path(run_dir) / DB_FILE).resolve()}"


class Trials:
    """The study behind one search: evaluations looked up by candidate key, new ones recorded."""

    def __init__(self, run_dir: Path, storage: str | None = None, *, sampler=None, resume: bool = False) -> None:
        optuna = require("optuna", "search")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.url = storage_url(run_dir, storage)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        exists = (Path(run_dir) / DB_FILE).exists() if storage is None else None
        if storage is None and exists and not resume:
            raise BadInput(f"{run_dir} already holds a search ({DB_FILE}): continue it with --resume {run_dir}, "
                           "or choose another --out")
        self.study = self._open(optuna, sampler)
        self.interrupted = self._fail_running()
        self._by_key = {e.key: e for e in self._finished()}

    def _open(self, optuna, sampler):
        """The study, created or loaded. Optuna's schema set-up is not atomic: a second process opening the
        same new database (another worker, a monitor) can make it fail once, so that is tried again."""
        for attempt in itertools.count(1):
            try:
                return optuna.create_study(study_name=STUDY_NAME, storage=self.url, load_if_exists=True,
                                           directions=["minimize", "maximize"], sampler=sampler)
            except Exception as err:  # a bad URL, an unreachable database, a corrupt file
                racing = any(sign in str(err) for sign in ("alembic_version", "database is locked", "already exists"))
                if not racing or attempt == SCHEMA_RETRIES:
                    raise BadInput(f"cannot open the search storage {self.url}: {type(err).__name__}: {err}") from err
                time.sleep(0.2 * attempt)

    def _fail_running(self) -> int:
        """Trials a killed process left running: marked failed (their work is lost, nothing else)."""
        optuna = require("optuna", "search")
        running = [t for t in self.study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
        for t in running:
            self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        return len(running)

    def _finished(self) -> list[Evaluation]:
        optuna = require("optuna", "search")
        out = []
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            attrs = dict(t.user_attrs)
            out.append(Evaluation(attrs.pop("key"), json.loads(attrs.pop("candidate")), t.values[0],
                                  attrs.pop("latency_kind"), t.values[1], attrs, t.number))
        return out

    def get(self, key: str) -> Evaluation | None:
        return self._by_key.get(key)

    def __len__(self) -> int:
        return len(self._by_key)

    def evaluations(self) -> list[Evaluation]:
        return sorted(self._by_key.values(), key=lambda e: e.number)

    def start(self):
        """A running trial (for samplers that suggest parameters, e.g. NSGA-II)."""
        return self.study.ask()

    def fail(self, trial) -> None:
        """A started trial whose candidate could not be built: failed in storage, never retried as is."""
        import optuna

        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def record(self, evaluation: Evaluation, trial=None) -> Evaluation:
        """Store a finished evaluation (in `trial` when a sampler made it)."""
        trial = trial if trial is not None else self.study.ask()
        trial.set_user_attr("key", evaluation.key)
        trial.set_user_attr("candidate", json.dumps(evaluation.candidate, sort_keys=True))
        trial.set_user_attr("latency_kind", evaluation.latency_kind)
        for name, value in evaluation.attrs.items():
            trial.set_user_attr(name, value)
        self.study.tell(trial, [evaluation.latency_ms, evaluation.accuracy])
        evaluation.number = trial.number
        self._by_key[evaluation.key] = evaluation
        return evaluation

    def pareto(self, kind: str = "predicted") -> list[Evaluation]:
        """Candidates no other of the same latency kind beats on both latency and accuracy."""
        evals = [e for e in self.evaluations() if e.latency_kind == kind]
        return [e for e in evals if not any(o.latency_ms <= e.latency_ms and o.accuracy >= e.accuracy and
                                            (o.latency_ms < e.latency_ms or o.accuracy > e.accuracy) for o in evals)]
