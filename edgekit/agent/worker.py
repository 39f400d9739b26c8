"""The one worker: jobs run strictly one at a time, because a measurement needs the machine to
itself. Each job runs in a child process (`edgekit.agent.runner`) so that a runtime crashing on a bad
engine fails that job, not the agent.

The children are forked from a server that has imported the runner and the runtimes once (`PRELOAD`,
before any of them starts a thread pool): a fresh process per job, without the seconds a Pi spends
importing ONNX and a runtime for every one of a search's many small unit jobs."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from edgekit.agent import runner
from edgekit.agent.store import JobStore
from edgekit.util import fork_server


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


PRELOAD = ["numpy", "onnx", "onnxruntime", "openvino", "edgekit.agent.runner"]  # those not installed are skipped
_FORKS = None


def _forks():
    global _FORKS
    if _FORKS is None:
        _FORKS = fork_server(PRELOAD)
    return _FORKS


def run_in_child(job_dir: Path, *, timeout_s: float) -> tuple[dict | None, str | None]:
    """(result, None) or (None, one-line error) of the job in job_dir, run by a fresh process."""
    outcome_file = job_dir / runner.OUTCOME
    outcome_file.unlink(missing_ok=True)
    child = _forks().Process(target=_run_job, args=(str(job_dir),), name=f"edgekit-job-{job_dir.name}")
    child.start()
    child.join(timeout_s)
    if child.exitcode is None:
        child.kill()
        child.join()
        return None, f"the job ran past the agent's limit of {timeout_s:g} s and was stopped"
    code = child.exitcode
    if outcome_file.is_file():
        outcome = json.loads(outcome_file.read_text())
        return outcome.get("result"), outcome.get("error")
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        why = f"killed by {name}"
    else:
        why = f"exit status {code}"
    return None, f"the runtime process died ({why}){_last_line(job_dir / 'runner.log')}"


def _run_job(job_dir: str) -> None:
    """In the forked child: the runner's output to runner.log, its exit status the process's. Its parent is the
    fork server, which ends when the last process holding its "alive" pipe does: this child lets go of its copy,
    so the server ends with the agent, and the runner with the server (runner._die_with_parent)."""
    from multiprocessing import forkserver

    server = forkserver._forkserver  # noqa: SLF001 - the one handle multiprocessing gives a child of the pipe
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
    os.chdir(job_dir)
    with open(os.devnull, "rb") as null, open(Path(job_dir) / "runner.log", "wb") as log:
        os.dup2(null.fileno(), 0)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    code = runner.main([job_dir, str(os.getppid())])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {lines[-1][:200]}" if lines else ""
