"""The agent's jobs on disk, under its workdir: jobs/<id>/ holds spec.json, state.json, result.json
and files/. Every write is atomic and a job appears whole or not at all (its folder is assembled
aside and renamed into place), so an agent killed at any moment restarts with every job it accepted:
those it was running are marked failed, those still queued run in the order they came."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from edgekit.agent.protocol import JOB_ID, JobSpec, JobState
from edgekit.errors import Failure
from edgekit.util import write_json

STAGING = ".incoming-"


KEEP_FILES = 200  # ended jobs whose files are kept (downloadable); older ones keep their state and result only


class QueueFull(Failure):
    """The agent already holds as many waiting jobs as it takes."""


class JobStore:
    def __init__(self, workdir: Path, *, max_queue: int = 64, keep_files: int = KEEP_FILES):
        self.root = Path(workdir).expanduser().resolve() / "jobs"  # absolute: each job runs in its own folder
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_queue = max_queue
        self.keep_files = keep_files
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[str, JobState] = {}
        self._keys: dict[str, str] = {}
        self.recovered = self._recover()
        self.prune_files()

    def _recover(self) -> dict[str, int]:
        """Load every job; one that was running when the agent stopped can't be trusted, so it fails."""
        counts = {"failed": 0, "queued": 0}
        restarted = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(STAGING):  # an upload the agent never acknowledged
                shutil.rmtree(path, ignore_errors=True)
                continue
            if not (JOB_ID.fullmatch(path.name) and (path / "state.json").is_file()):
                continue
            try:
                state = JobState.model_validate_json((path / "state.json").read_text())
            except (OSError, ValueError) as err:
                sys.stderr.write(f"edgekit agent: warning: skipping {path}: unreadable state.json ({err})\n")
                continue
            if state.state == "running":
                state = state.model_copy(update={
                    "state": "failed", "finished": time.time(),
                    "error": f"the agent stopped during this job (restarted at {restarted})"})
                self._write_state(state)
                counts["failed"] += 1
            counts["queued"] += state.state == "queued"
            self._jobs[state.id] = state
            if state.client_key:
                self._keys[state.client_key] = state.id
        return counts

    def job_dir(self, job_id: str) -> Path:
        if not JOB_ID.fullmatch(job_id):
            raise ValueError(f"not a job id: {job_id[:40]!r}")
        return self.root / job_id

    def stage(self) -> Path:
        """A folder to assemble a new job in (its files/ already there), invisible until `create`."""
        path = Path(tempfile.mkdtemp(prefix=STAGING, dir=self.root))
        (path / "files").mkdir()
        return path

    @staticmethod
    def discard(staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def key_taken(self, client_key: str | None) -> JobState | None:
        with self._lock:
            job_id = self._keys.get(client_key) if client_key else None
            return self._jobs[job_id] if job_id else None

    def create(self, spec: JobSpec, staged: Path) -> tuple[JobState, bool]:
        """Queue the job assembled in `staged`: (its state, True), or (the job made earlier with the same
        client_key, False). QueueFull when max_queue jobs are waiting already."""
        with self._lock:
            earlier = self._keys.get(spec.client_key) if spec.client_key else None
            if earlier:
                self.discard(staged)
                return self._jobs[earlier], False
            waiting = sum(job.state == "queued" for job in self._jobs.values())
            if waiting >= self.max_queue:
                self.discard(staged)
                raise QueueFull(f"the agent's queue is full ({waiting} jobs waiting, at most {self.max_queue}): "
                                "try again when some have run")
            job_id = self._new_id()
            state = JobState(id=job_id, kind=spec.kind, target=spec.target, state="queued", created=time.time(),
                             client_key=spec.client_key)
            write_json(staged / "spec.json", spec.model_dump(mode="json"))
            write_json(staged / "state.json", state.model_dump(mode="json", exclude={"result"}))
            os.rename(staged, self.root / job_id)
            self._jobs[job_id] = state
            if spec.client_key:
                self._keys[spec.client_key] = job_id
            self._changed.notify_all()
            return state, True

    def _new_id(self) -> str:
        while True:  # sortable by creation time, unguessable within the millisecond
            job_id = f"{int(time.time() * 1000):012x}-{secrets.token_hex(4)}"
            if job_id not in self._jobs:
                return job_id

    def get(self, job_id: str) -> JobState | None:
        """A job's state, with its result once it has one; None for an unknown id."""
        with self._lock:
            state = self._jobs.get(job_id)
        if state is None or state.state != "finished":
            return state
        result = json.loads((self.root / job_id / "result.json").read_text())
        return state.model_copy(update={"result": result})

    def jobs(self) -> list[JobState]:
        """Every job, oldest first, without results (GET a job for its result)."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda job: (job.created, job.id))

    def spec(self, job_id: str) -> JobSpec:
        return JobSpec.model_validate_json((self.job_dir(job_id) / "spec.json").read_text())

    def counts(self) -> dict[str, int]:
        with self._lock:
            states = [job.state for job in self._jobs.values()]
        return {name: states.count(name) for name in ("queued", "running", "finished", "failed")}

    def next_job(self, timeout_s: float) -> JobState | None:
        """Take the oldest queued job and mark it running; None if none came within timeout_s."""
        with self._changed:
            queued = self._oldest_queued()
            if queued is None:
                self._changed.wait(timeout_s)
                queued = self._oldest_queued()
            if queued is None:
                return None
            state = queued.model_copy(update={"state": "running", "started": time.time()})
            self._write_state(state)
            self._jobs[state.id] = state
            return state

    def _oldest_queued(self) -> JobState | None:
        queued = [job for job in self._jobs.values() if job.state == "queued"]
        return min(queued, key=lambda job: (job.created, job.id)) if queued else None

    def finish(self, job_id: str, *, result: dict | None = None, error: str | None = None) -> JobState:
        """Record the outcome: the result file first, then the state that points at it."""
        if result is not None:
            write_json(self.root / job_id / "result.json", result)
        with self._lock:
            state = self._jobs[job_id].model_copy(update={
                "state": "failed" if error is not None else "finished", "error": error, "finished": time.time()})
            self._write_state(state)
            self._jobs[job_id] = state
        self.prune_files()
        return state

    def prune_files(self) -> list[str]:
        """Disk stays bounded: past the newest `keep_files` ended jobs, a job's uploaded and built files
        go; its state and result stay (no result is ever lost; only its files can no longer be downloaded)."""
        with self._lock:
            ended = sorted((j for j in self._jobs.values() if j.state in ("finished", "failed")),
                           key=lambda job: (job.finished or job.created, job.id), reverse=True)
        pruned = []
        for job in ended[self.keep_files:]:
            files = self.root / job.id / "files"
            if files.exists():
                shutil.rmtree(files, ignore_errors=True)
                pruned.append(job.id)
        return pruned

    def _write_state(self, state: JobState) -> None:
        write_json(self.root / state.id / "state.json", state.model_dump(mode="json", exclude={"result"}))
