"""The one worker: jobs run strictly one at a time, because a measurement needs the machine to
itself. Each job runs in a child process (`edgekit.agent.runner`) so that a runtime crashing on a bad
engine fails that job, not the agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from edgekit.agent.runner import OUTCOME
from edgekit.agent.store import JobStore


class Worker(threading.Thread):
    def __init__(self, store: JobStore, *, job_timeout_s: float = 3600.0):
        super().__init__(name="edgekit-agent-worker", daemon=True)
        self.store = store
        self.job_timeout_s = job_timeout_s
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.is_set():
            job = self.store.next_job(timeout_s=0.5)
            if job is None:
                continue
            try:
                result, error = run_in_child(self.store.job_dir(job.id), timeout_s=self.job_timeout_s)
            except Exception as err:  # the worker must outlive any one job
                result, error = None, f"the agent could not run this job: {type(err).__name__}: {err}"
            try:
                self.store.finish(job.id, result=result, error=error)
            except Exception as err:  # a full disk, say: the job stays running and fails on the next start
                sys.stderr.write(f"edgekit agent: error: cannot record the end of job {job.id}: {err}\n")


def run_in_child(job_dir: Path, *, timeout_s: float) -> tuple[dict | None, str | None]:
    """(result, None) or (None, one-line error) of the job in job_dir, run by a fresh Python process."""
    outcome_file = job_dir / OUTCOME
    outcome_file.unlink(missing_ok=True)
    with open(job_dir / "runner.log", "wb") as log:
        child = subprocess.Popen([sys.executable, "-m", "edgekit.agent.runner", str(job_dir), str(os.getpid())],
                                 cwd=job_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            return None, f"the job ran past the agent's limit of {timeout_s:g} s and was stopped"
    if outcome_file.is_file():
        outcome = json.loads(outcome_file.read_text())
        return outcome.get("result"), outcome.get("error")
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        why = f"killed by {name}"
    else:
        why = f"exit status {code}"
    return None, f"the runtime process died ({why}){_last_line(job_dir / 'runner.log')}"


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {lines[-1][:200]}" if lines else ""
