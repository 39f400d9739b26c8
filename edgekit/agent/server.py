"""The agent's HTTP service (FastAPI), on the device: jobs come in as a JSON spec plus the files it
names with their sha256, wait in an on-disk queue, and run one at a time. Every route but /v1/health
needs the bearer token; uploads are bounded in size and count, and every file name and hash is
checked before anything is written where a job can see it."""


import ipaddress
import math
import socket
import stat
import sys
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from edgekit.agent.security import load_token
from edgekit.agent.store import KEEP_FILES, JobStore
from edgekit.agent.worker import Worker
from edgekit.errors import BadInput, Failure, require
from edgekit.user_files import check_folder

DEFAULT_WORKDIR = Path("~/.edgekit/agent")


def create_app(workdir: Path, token: str, *, max_upload_mb: float = 256, max_queue: int = 64,
               job_timeout_s: float = 3600.0, keep_files: int = KEEP_FILES):
    """The FastAPI app over a job store in `workdir`; its one worker starts and stops with the app.
    Its routes are edgekit.agent.routes."""
    require("fastapi", "agent")
    require("python_multipart", "agent")
    from fastapi import FastAPI

    from edgekit.agent import routes  # imports FastAPI (the [agent] extra) when loaded

    store = JobStore(workdir, max_queue=max_queue, keep_files=keep_files)
    worker = Worker(store, job_timeout_s=job_timeout_s)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="edgekit agent", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.settings = routes.AgentSettings(token, max_upload_mb, max_queue)
    routes.add_error_handlers(app)
    app.include_router(routes.open_routes)
    app.include_router(routes.job_routes)
    return app


BACKLOG = 2048  # uvicorn's default


def serve(*, host: str = "127.0.0.1", port: int = 8700, token_file: Path, workdir: Path = DEFAULT_WORKDIR,
          max_upload_mb: float = 256, max_queue: int = 64, keep_files: int = KEEP_FILES,
          announce: Callable[[str], None] | None = None) -> None:
    """Run the agent until interrupted. A token is required: there is no way to run it open."""
    token = load_token(token_file)
    if not 0 < max_upload_mb < math.inf:
        raise BadInput(f"--max-upload-mb must be a positive number of MiB, got {max_upload_mb}")
    if max_queue < 1:
        raise BadInput(f"--max-queue must be at least 1, got {max_queue}")
    if keep_files < 0:
        raise BadInput(f"--keep-files must be zero or more, got {keep_files}")
    if not 0 <= port <= 65535:
        raise BadInput(f"--port must be 1 to 65535 (or 0: any free port), got {port}")
    uvicorn = require("uvicorn", "agent")
    workdir = check_folder(workdir, "--workdir")
    app = create_app(workdir, token, max_upload_mb=max_upload_mb, max_queue=max_queue, keep_files=keep_files)
    sock, loopback = _listen(host, port)
    say = announce or (lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
    if not loopback:
        sys.stderr.write(f"edgekit agent: warning: listening on {host}, beyond this machine: anyone who can reach it "
                         "and has the token can run jobs here (plain HTTP: use a trusted network or a tunnel)\n")
    if Path(token_file).expanduser().stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        sys.stderr.write(f"edgekit agent: warning: {token_file} is readable by other users (chmod 600 it)\n")
    recovered = app.state.store.recovered
    shown = f"[{host}]" if ":" in host else host
    say(f"edgekit agent listening on http://{shown}:{sock.getsockname()[1]} (workdir {workdir}; "
        f"{recovered['queued']} queued job(s) resumed, {recovered['failed']} interrupted job(s) marked failed)")
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


def _listen(host: str, port: int) -> tuple[socket.socket, bool]:
    """A listening socket (port 0: any free port), and whether it is on a loopback address."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise BadInput(f"cannot listen on '{host}': {err.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(BACKLOG)  # listening before the banner says so: a client that connects at once waits, not refused
    except OSError as err:
        sock.close()
        raise Failure(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock, ipaddress.ip_address(address[0].split("%")[0]).is_loopback

