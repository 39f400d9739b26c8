"""`edgekit ARGS` in a fresh process, without paying the imports each time.

A CLI call that builds or measures anything imports torch, ONNX, the runtimes and NNCF first: 3 to 6 s
on a 2-core CI machine, for every one of the suite's ~150 calls. Here a fork server imports them once
(before any thread pool starts) and forks one child per call, which then runs what `python -m edgekit
ARGS` runs: its own process, working folder, environment, stdout and stderr, exit status and exit
handlers. Only the imports are shared, as pages of memory, never as state: the command-line modules
(and their consoles, which read the environment) are imported in the child, numpy's global generator
is reseeded there, and multiprocessing is reset to a fresh interpreter's defaults.

A call whose environment changes how the interpreter or a runtime starts (`STARTUP_ENV`, read when a
library loads) runs as a real `python -m edgekit` instead, and so does every call when
EDGEKIT_TESTS_FRESH_PYTHON=1 (README: Tests).
"""

from __future__ import annotations

import atexit
import faulthandler
import multiprocessing
import multiprocessing.process
import os
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from edgekit.util import fork_server

PRELOAD = ["numpy", "scipy", "sklearn", "matplotlib", "torch", "onnx", "onnxscript", "onnxruntime", "openvino", "nncf",
           "torch_pruning", "optuna", "transformers", "ai_edge_litert.interpreter", "hls4ml", "ray", "fastapi", "httpx",
           "uvicorn", "cryptography", "edgekit.deploy", "edgekit.search", "edgekit.calibrate", "tests.cli_warmup"]
STARTUP_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTHONPATH", "PYTHONHASHSEED",
               "PYTHONWARNINGS", "LD_PRELOAD", "LD_LIBRARY_PATH")
_CONTEXT = None


def run_edgekit(args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """`python -m edgekit ARGS` in `cwd` with exactly `env`, as a forked child of the fork server."""
    if os.environ.get("EDGEKIT_TESTS_FRESH_PYTHON") == "1" or any(env.get(k) != os.environ.get(k) for k in STARTUP_ENV):
        return subprocess.run([sys.executable, "-m", "edgekit", *args], cwd=cwd, capture_output=True, text=True,
                              env=env, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="edgekit-cli-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        child = _context().Process(target=_run_in_child, args=(list(args), str(cwd), dict(env), str(out), str(err)))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["edgekit", *args], timeout)
        code = child.exitcode if child.exitcode >= 0 else 128 - child.exitcode  # killed by a signal: as a shell says
        return subprocess.CompletedProcess(["edgekit", *args], code, out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = fork_server(PRELOAD)
    return _CONTEXT


def _run_in_child(args: list[str], cwd: str, env: dict, out: str, err: str) -> None:
    """What `python -m edgekit ARGS` does, from the fork server's child: then it exits as that would."""
    multiprocessing.set_start_method(None, force=True)  # a fresh interpreter's defaults, not the server's
    multiprocessing.current_process().name = "MainProcess"
    multiprocessing.process._parent_process = None
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, path in ((1, out), (2, err)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(file, fd)
        os.close(file)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - the process's stdin for its whole life
    faulthandler.enable(all_threads=True)  # a crash in a runtime shows where, as `python -X faulthandler` would
    import numpy

    numpy.random.seed()  # seeded once in the server: each process gets its own, as fresh ones do
    sys.argv = [str(Path(__file__).resolve().parents[1] / "edgekit" / "__main__.py"), *args]
    code = 0
    try:
        from edgekit.cli import main

        main()
    except SystemExit as done:
        if isinstance(done.code, str):
            sys.stderr.write(done.code + "\n")
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback on stderr, exit 1
        traceback.print_exc()
        code = 1
    threading._shutdown()  # as the interpreter ends: thread pools told to stop, other threads waited for
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
