"""The agent's HTTP routes and error replies, mounted by server.create_app (which requires FastAPI
before importing this). Each handler is a named function that finds the job store and the serve
options on the app's state; every route but /v1/health needs the bearer token."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from edgekit.agent.info import machine_info
from edgekit.agent.protocol import JOB_ID, MAX_FILES, JobSpec, one_line_error
from edgekit.agent.security import safe_name, token_ok
from edgekit.agent.store import JobStore, QueueFull
from edgekit.errors import BadInput

SPEC_LIMIT = 256 * 1024  # the JSON spec field; files are bounded by max_upload_mb


@dataclass(frozen=True)
class AgentSettings:
    """The serve options each request is checked against (kept on app.state.settings)."""

    token: str
    max_upload_mb: float
    max_queue: int

    @property
    def upload_limit(self) -> int:
        return int(self.max_upload_mb * 2**20)


class _TooLarge(Exception):
    pass


def _fail(status: int, detail: str, **headers: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers=headers or None)


def _store(request: Request) -> JobStore:
    return request.app.state.store


def _settings(request: Request) -> AgentSettings:
    return request.app.state.settings


def _auth(request: Request) -> None:
    if not token_ok(request.headers.get("authorization"), _settings(request).token):
        raise _fail(401, "a valid token is needed: send 'Authorization: Bearer <token>' (the agent's --token-file)",
                    **{"WWW-Authenticate": "Bearer"})


def _known(store: JobStore, job_id: str):
    """The job's state, or 404 (an id that is not one is not looked up)."""
    if not JOB_ID.fullmatch(job_id):
        raise _fail(404, f"no job '{job_id[:40]}' here (not a job id)")
    state = store.get(job_id)
    if state is None:
        raise _fail(404, f"no job '{job_id}' here")
    return state


# ---- errors: every reply is {"detail": one line} ---------------------------------------------------------

def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.add_exception_handler(Exception, _internal)


async def _http_error(request, exc):
    return JSONResponse({"detail": _one_line(str(exc.detail))}, status_code=exc.status_code, headers=exc.headers)


async def _bad_request(request, exc):
    return JSONResponse({"detail": one_line_error(exc)}, status_code=400)


async def _internal(request, exc):
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {_one_line(str(exc))}"}, status_code=500)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:600]


# ---- the routes ------------------------------------------------------------------------------------------

open_routes = APIRouter()
job_routes = APIRouter(dependencies=[Depends(_auth)])


@open_routes.get("/v1/health")
def health() -> dict:
    return {"ok": True}


@job_routes.get("/v1/info")
def info(request: Request) -> dict:
    store, settings = _store(request), _settings(request)
    counts = store.counts()
    return {**machine_info(), "queue": counts["queued"], "running": counts["running"], "jobs": counts,
            "max_queue": settings.max_queue, "max_upload_mb": settings.max_upload_mb}


@job_routes.get("/v1/jobs")
def jobs(request: Request) -> list[dict]:
    return [job.model_dump(mode="json") for job in _store(request).jobs()]


@job_routes.get("/v1/jobs/{job_id}")
def job(request: Request, job_id: str) -> dict:
    return _known(_store(request), job_id).model_dump(mode="json")


@job_routes.get("/v1/jobs/{job_id}/files/{name}")
def download(request: Request, job_id: str, name: str):
    store = _store(request)
    state = _known(store, job_id)
    try:
        safe_name(name, suffixes=None)
    except BadInput as err:
        raise _fail(400, str(err)) from None
    built = (state.result or {}).get("files") or {}
    if name not in built:
        raise _fail(404, f"job {job_id} has no built file '{name}' (state {state.state}; built: {', '.join(built) or 'none'})")
    path = store.job_dir(job_id) / "files" / "engine" / name
    if not path.is_file():  # pruned: past the newest --keep-files ended jobs
        raise _fail(404, f"job {job_id}'s files were removed (only the newest {store.keep_files} ended jobs keep "
                         "theirs); its result is still here")
    return FileResponse(path, filename=name, media_type="application/octet-stream")


@job_routes.post("/v1/jobs", status_code=202)
async def submit(request: Request) -> dict:
    """A job in: its size and the queue checked before the body is read, then its spec and files."""
    store, settings = _store(request), _settings(request)
    await _refuse_early(request, store, settings)
    form = await _parse_form(request, settings)
    try:
        return await _create_job(store, form)
    finally:
        await form.close()


# ---- submit's steps --------------------------------------------------------------------------------------

async def _refuse_early(request: Request, store: JobStore, settings: AgentSettings) -> None:
    """413 for a declared size over the limit, 503 for a full queue, 400 for a body not multipart."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _fail(400, f"bad Content-Length '{declared[:20]}'")
        if int(declared) > settings.upload_limit:
            raise _fail(413, _too_large(int(declared), settings.max_upload_mb))
    if store.counts()["queued"] >= settings.max_queue:
        # Read and drop the upload first: a client still sending never sees an answer to a closed connection.
        try:
            async for _ in _counted(request.stream(), settings.upload_limit):
                pass
        except _TooLarge:
            raise _fail(413, _too_large(None, settings.max_upload_mb)) from None
        raise _fail(503, f"the agent's queue is full ({settings.max_queue} jobs waiting): try again when some have run")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise _fail(400, "send the job as multipart/form-data: a 'spec' JSON field and one part per file")


async def _parse_form(request: Request, settings: AgentSettings):
    """The multipart form, its size counted as it arrives (a missing or false Content-Length)."""
    parser = MultiPartParser(request.headers, _counted(request.stream(), settings.upload_limit), max_files=MAX_FILES,
                             max_fields=4, max_part_size=SPEC_LIMIT)
    try:
        return await parser.parse()
    except _TooLarge:
        raise _fail(413, _too_large(None, settings.max_upload_mb)) from None
    except MultiPartException as err:
        raise _fail(400, f"bad multipart upload: {err.message}") from None


async def _create_job(store: JobStore, form) -> dict:
    """The queued job (or the earlier one with the same client key); 400 for a bad spec or file."""
    try:
        spec, uploads = _read_form(form, UploadFile)
        earlier = store.key_taken(spec.client_key)
        if earlier is not None:
            return {"id": earlier.id, "state": earlier.state, "duplicate": True}
        state, created = await _stage_and_create(store, spec, uploads)
    except BadInput as err:
        raise _fail(400, str(err)) from None
    except QueueFull as err:
        raise _fail(503, str(err)) from None
    return {"id": state.id, "state": state.state, "duplicate": not created}


async def _stage_and_create(store: JobStore, spec: JobSpec, uploads: dict):
    """Save each upload where no job sees it, check its sha256, then make it a job; nothing is left on failure."""
    staged = store.stage()
    try:
        for name, upload in uploads.items():
            digest = await run_in_threadpool(_save, upload.file, staged / "files" / name)
            if digest != spec.files[name]:
                raise BadInput(f"{name}: its sha256 is {digest[:16]}…, the spec says {spec.files[name][:16]}… "
                               "(changed or cut short on the way)")
        return await run_in_threadpool(store.create, spec, staged)
    except BaseException:
        store.discard(staged)
        raise


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
