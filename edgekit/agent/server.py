"""The agent's HTTP service (FastAPI), on the device: jobs come in as a JSON spec plus the files it
names with their sha256, wait in an on-disk queue, and run one at a time. Every route but /v1/health
needs the bearer token; uploads are bounded in size and count, and every file name and hash is
checked before anything is written where a job can see it."""


import hashlib
import ipaddress
import math
import socket
import stat
import sys
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from edgekit.agent.info import machine_info
from edgekit.agent.protocol import JOB_ID, MAX_FILES, JobSpec, one_line_error
from edgekit.agent.security import load_token, safe_name, token_ok
from edgekit.agent.store import KEEP_FILES, JobStore, QueueFull
from edgekit.agent.worker import Worker
from edgekit.errors import BadInput, Failure, require
from edgekit.user_files import check_folder

DEFAULT_WORKDIR = Path("~/.edgekit/agent")
SPEC_LIMIT = 256 * 1024  # the JSON spec field; files are bounded by max_upload_mb


class _TooLarge(Exception):
    pass


def create_app(workdir: Path, token: str, *, max_upload_mb: float = 256, max_queue: int = 64,
               job_timeout_s: float = 3600.0, keep_files: int = KEEP_FILES):
    """The FastAPI app over a job store in `workdir`; its one worker starts and stops with the app."""
    require("fastapi", "agent")
    require("python_multipart", "agent")
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser

    store = JobStore(workdir, max_queue=max_queue, keep_files=keep_files)
    worker = Worker(store, job_timeout_s=job_timeout_s)
    limit = int(max_upload_mb * 2**20)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="edgekit agent", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store

    def fail(status: int, detail: str, **headers: str):
        return HTTPException(status_code=status, detail=detail, headers=headers or None)

    def auth(request: Request) -> None:
        if not token_ok(request.headers.get("authorization"), token):
            raise fail(401, "a valid token is needed: send 'Authorization: Bearer <token>' (the agent's --token-file)",
                       **{"WWW-Authenticate": "Bearer"})

    def known(job_id: str):
        if not JOB_ID.fullmatch(job_id):
            raise fail(404, f"no job '{job_id[:40]}' here (not a job id)")
        state = store.get(job_id)
        if state is None:
            raise fail(404, f"no job '{job_id}' here")
        return state

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return JSONResponse({"detail": _one_line(str(exc.detail))}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request, exc):
        return JSONResponse({"detail": one_line_error(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request, exc):
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {_one_line(str(exc))}"}, status_code=500)

    @app.get("/v1/health")
    def health() -> dict:
        return {"ok": True}

    @app.get("/v1/info", dependencies=[Depends(auth)])
    def info() -> dict:
        counts = store.counts()
        return {**machine_info(), "queue": counts["queued"], "running": counts["running"], "jobs": counts,
                "max_queue": max_queue, "max_upload_mb": max_upload_mb}

    @app.get("/v1/jobs", dependencies=[Depends(auth)])
    def jobs() -> list[dict]:
        return [job.model_dump(mode="json") for job in store.jobs()]

    @app.get("/v1/jobs/{job_id}", dependencies=[Depends(auth)])
    def job(job_id: str) -> dict:
        return known(job_id).model_dump(mode="json")

    @app.get("/v1/jobs/{job_id}/files/{name}", dependencies=[Depends(auth)])
    def download(job_id: str, name: str):
        state = known(job_id)
        try:
            safe_name(name, suffixes=None)
        except BadInput as err:
            raise fail(400, str(err)) from None
        built = (state.result or {}).get("files") or {}
        if name not in built:
            raise fail(404, f"job {job_id} has no built file '{name}' (state {state.state}; built: {', '.join(built) or 'none'})")
        path = store.job_dir(job_id) / "files" / "engine" / name
        if not path.is_file():  # pruned: past the newest --keep-files ended jobs
            raise fail(404, f"job {job_id}'s files were removed (only the newest {store.keep_files} ended jobs keep "
                            "theirs); its result is still here")
        return FileResponse(path, filename=name, media_type="application/octet-stream")

    @app.post("/v1/jobs", status_code=202, dependencies=[Depends(auth)])
    async def submit(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise fail(400, f"bad Content-Length '{declared[:20]}'")
            if int(declared) > limit:
                raise fail(413, _too_large(int(declared), max_upload_mb))
        if store.counts()["queued"] >= max_queue:
            # Read and drop the upload first: a client still sending never sees an answer to a closed connection.
            try:
                async for _ in _counted(request.stream(), limit):
                    pass
            except _TooLarge:
                raise fail(413, _too_large(None, max_upload_mb)) from None
            raise fail(503, f"the agent's queue is full ({max_queue} jobs waiting): try again when some have run")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise fail(400, "send the job as multipart/form-data: a 'spec' JSON field and one part per file")
        parser = MultiPartParser(request.headers, _counted(request.stream(), limit), max_files=MAX_FILES,
                                 max_fields=4, max_part_size=SPEC_LIMIT)
        try:
            form = await parser.parse()
        except _TooLarge:
            raise fail(413, _too_large(None, max_upload_mb)) from None
        except MultiPartException as err:
            raise fail(400, f"bad multipart upload: {err.message}") from None
        try:
            spec, uploads = _read_form(form, UploadFile)
            earlier = store.key_taken(spec.client_key)
            if earlier is not None:
                return {"id": earlier.id, "state": earlier.state, "duplicate": True}
            staged = store.stage()
            try:
                for name, upload in uploads.items():
                    digest = await run_in_threadpool(_save, upload.file, staged / "files" / name)
                    if digest != spec.files[name]:
                        raise BadInput(f"{name}: its sha256 is {digest[:16]}…, the spec says {spec.files[name][:16]}… "
                                       "(changed or cut short on the way)")
                state, created = await run_in_threadpool(store.create, spec, staged)
            except BaseException:
                store.discard(staged)
                raise
        except BadInput as err:
            raise fail(400, str(err)) from None
        except QueueFull as err:
            raise fail(503, str(err)) from None
        finally:
            await form.close()
        return {"id": state.id, "state": state.state, "duplicate": not created}

    return app


def _read_form(form, upload_type) -> tuple[JobSpec, dict]:
    """The spec and the uploads by name; BadInput unless the names are safe and exactly the spec's."""
    spec_text = form.get("spec")
    if not isinstance(spec_text, str):
        raise BadInput("the upload has no 'spec' field (the job's JSON)")
    try:
        spec = JobSpec.model_validate_json(spec_text)
    except ValueError as err:
        raise BadInput(f"bad job spec: {one_line_error(err)}") from None
    uploads: dict = {}
    for _, value in form.multi_items():
        if isinstance(value, upload_type):
            name = safe_name(value.filename or "")
            if name in uploads:
                raise BadInput(f"'{name}' is uploaded twice")
            uploads[name] = value
    missing, extra = sorted(set(spec.files) - set(uploads)), sorted(set(uploads) - set(spec.files))
    if missing or extra:
        raise BadInput("the uploaded files are not the spec's: " + "; ".join(
            part for part in (f"missing {', '.join(missing)}" if missing else "",
                              f"not in the spec {', '.join(extra)}" if extra else "") if part))
    return spec, uploads


async def _counted(stream, limit: int):
    """The request body, stopped as soon as it passes the limit (a missing or false Content-Length)."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise _TooLarge
        yield chunk


def _save(source, dest: Path) -> str:
    """Copy an upload into place and return its sha256."""
    digest = hashlib.sha256()
    source.seek(0)
    with open(dest, "wb") as out:
        while block := source.read(1 << 20):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _too_large(size: int | None, max_mb: float) -> str:
    what = f"the upload is {size / 2**20:.1f} MiB" if size is not None else "the upload is too large"
    return f"{what}; this agent takes at most {max_mb:g} MiB (edgekit agent serve --max-upload-mb)"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:600]


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

