"""The host's side of the agent: submit a job with its files, wait for it, download what it built.
Every failure is one line that says where and what (the agent is down, refused the token, refused
the upload, the job failed); connection errors and a full queue are retried with backoff, and a
retried submission never makes a second job (each carries a client_key)."""

from __future__ import annotations

import json
import secrets
import time
from contextlib import ExitStack
from pathlib import Path

from edgekit.agent.protocol import JobSettings, JobSpec, one_line_error
from edgekit.agent.security import safe_name, sha256_file
from edgekit.errors import BadInput, Failure, require
from edgekit.profile import ProfileSettings


class AgentUnreachable(Failure):
    """Nothing answers at the agent's address (down, wrong address, a firewall), even after retries."""


class AgentRefused(BadInput):
    """The agent answered no to this request (token, name, hash, size): sending it again won't help."""


class AgentBusy(Failure):
    """The agent's queue stayed full through every retry."""


class JobFailed(Failure):
    """The job ran on the agent and failed there; the message is the agent's one line."""


class AgentClient:
    def __init__(self, url: str, token: str, *, timeout_s: float = 30.0, retries: int = 3):
        self._httpx = require("httpx", "agent")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self._http = self._httpx.Client(base_url=self.url, timeout=timeout_s,
                                        headers={"Authorization": f"Bearer {token}"})
        self._max_upload_mb: float | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def health(self) -> dict:
        return self._request("GET", "/v1/health").json()

    def info(self) -> dict:
        info = self._request("GET", "/v1/info").json()
        self._max_upload_mb = info.get("max_upload_mb")
        return info

    def jobs(self) -> list[dict]:
        return self._request("GET", "/v1/jobs").json()

    def job(self, job_id: str) -> dict:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def submit(self, spec: dict, files: dict[str, Path]) -> str:
        """Queue a job: `spec` is a JobSpec's fields less `files`, which this fills with each file's
        sha256 (and a client_key, so a retry returns the same job). Returns the job's id."""
        paths = {safe_name(name): Path(path) for name, path in files.items()}
        for name, path in paths.items():
            if not path.is_file():
                raise BadInput(f"cannot send {name}: {path} is not a file")
        fields = {**spec, "files": {name: sha256_file(path) for name, path in paths.items()}}
        fields["client_key"] = fields.get("client_key") or secrets.token_hex(16)
        try:
            checked = JobSpec.model_validate(fields)
        except ValueError as err:
            raise BadInput(f"bad job spec: {one_line_error(err)}") from None
        size_mb = sum(path.stat().st_size for path in paths.values()) / 2**20
        if self._max_upload_mb is None:
            self.info()
        if self._max_upload_mb is not None and size_mb > self._max_upload_mb:
            raise AgentRefused(f"the agent at {self.url} takes uploads of at most {self._max_upload_mb:g} MiB; "
                               f"these files are {size_mb:.1f} MiB")
        return self._request("POST", "/v1/jobs", upload=(checked.model_dump_json(), paths)).json()["id"]

    def wait(self, job_id: str, *, timeout_s: float = 600.0, poll_s: float = 0.1) -> dict:
        """The job's final state (with its result), polling with backoff; JobFailed if it failed. The delay
        between polls grows to 2 s but stays within a tenth of the time waited so far, so a job is seen
        finished at most about 10 % after it finishes (a 1.4 s unit timing was seen up to 0.7 s late)."""
        started = time.monotonic()
        deadline = started + timeout_s
        delay = poll_s
        while True:
            state = self.job(job_id)
            if state["state"] == "finished":
                return state
            if state["state"] == "failed":
                raise JobFailed(f"job {job_id} failed on the agent at {self.url}: {state['error']}")
            if time.monotonic() + delay > deadline:
                raise Failure(f"job {job_id} on the agent at {self.url} did not finish within {timeout_s:g} s "
                              f"(it is {state['state']}): wait longer, or GET /v1/jobs/{job_id} later")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0, max(poll_s, (time.monotonic() - started) / 10))

    def download(self, job_id: str, name: str, dest: Path) -> Path:
        """Fetch a file the job built into `dest` (a folder, or the file's path), checked against its sha256."""
        safe_name(name, suffixes=None)
        expected = ((self.job(job_id).get("result") or {}).get("files") or {}).get(name, {}).get("sha256")
        dest = Path(dest)
        path = dest / name if dest.is_dir() else dest
        tmp = path.with_name(f".{path.name}.part")
        try:
            tmp.write_bytes(self._request("GET", f"/v1/jobs/{job_id}/files/{name}").content)
            if expected and sha256_file(tmp) != expected:
                raise Failure(f"{name} from the agent at {self.url} does not match its sha256 (cut short?)")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def profile(self, artifact_paths: Path | list[Path], target: str, settings: ProfileSettings | dict | None = None,
                inputs: Path | None = None, *, beside: Path | list[Path] | None = None, layer_rounds: int = 0,
                timeout_s: float = 600.0) -> dict:
        """Measure an engine on the agent's device: the first path is the engine (an IR's .bin beside
        it is sent too); `inputs`, an .npz of the engine's inputs by name (default: synthetic). `beside`:
        another engine timed with it in alternating rounds (the result's `rounds`), and over
        `layer_rounds` rounds both engines' per-layer times (`layer_rounds`)."""
        files = _engine_files(artifact_paths)
        spec = {"kind": "profile", "target": target, "artifact": next(iter(files)), "settings": job_settings(settings),
                "inputs": Path(inputs).name if inputs else None, "layer_rounds": layer_rounds}
        if beside is not None:
            other = _engine_files(beside)  # renamed: an IR's .bin keeps its .xml's name
            files |= {f"beside-{name}": path for name, path in other.items()}
            spec["beside"] = f"beside-{next(iter(other))}"
        files |= {Path(inputs).name: Path(inputs)} if inputs else {}
        return self.wait(self.submit(spec, files), timeout_s=timeout_s)["result"]

    def unit(self, path: Path, target: str, precision: str, *, runs: int, wall: bool, timeout_s: float = 600.0) -> dict:
        """Time one execution unit of the latency table (an ONNX model of one layer) with the runtime's own
        profiler on the device: its `ms`, `wall_ms` (when `wall`) and `kernels`."""
        spec = {"kind": "unit", "target": target, "artifact": Path(path).name, "precision": precision, "wall": wall,
                "settings": {"repeats": runs}}
        return self.wait(self.submit(spec, {Path(path).name: Path(path)}), timeout_s=timeout_s)["result"]

    def build(self, onnx_path: Path, target: str, plan: dict | None = None, settings: ProfileSettings | dict | None = None,
              *, out_dir: Path | None = None, timeout_s: float = 1800.0, dla_core: int | None = None) -> dict:
        """Build the engine on the agent's device from an ONNX file (for DLA core `dla_core`, if given),
        measure it, and download what was built into out_dir (when given)."""
        spec = {"kind": "build", "target": target, "artifact": Path(onnx_path).name, "plan": plan,
                "settings": job_settings(settings), **({"dla_core": dla_core} if dla_core is not None else {})}
        job_id = self.submit(spec, {Path(onnx_path).name: Path(onnx_path)})
        result = self.wait(job_id, timeout_s=timeout_s)["result"]
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            for name in result["files"]:
                if "/" not in name:
                    self.download(job_id, name, Path(out_dir))
        return result

    def _request(self, method: str, path: str, *, upload: tuple[str, dict[str, Path]] | None = None):
        """Send with retries on connection errors and 503; one-line errors for everything else."""
        httpx = self._httpx
        delay = 0.25
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                if upload is None:
                    response = self._http.request(method, path)
                else:
                    response = self._post_files(path, *upload)
            except httpx.TimeoutException:
                error = AgentUnreachable(self._unreachable(f"no answer within {self.timeout_s:g} s"))
            except httpx.TransportError as err:
                error = AgentUnreachable(self._unreachable(_why(err)))
            else:
                if response.status_code == 503 and not last:
                    time.sleep(delay)
                    delay *= 2
                    continue
                return self._checked(response)
            if last:
                raise error
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _post_files(self, path: str, spec_json: str, paths: dict[str, Path]):
        with ExitStack() as stack:
            parts = [("files", (name, stack.enter_context(open(p, "rb")), "application/octet-stream"))
                     for name, p in paths.items()]
            return self._http.post(path, data={"spec": spec_json}, files=parts)

    def _unreachable(self, why: str) -> str:
        return f"the agent at {self.url} does not answer ({why}): is `edgekit agent serve` running there?"

    def _checked(self, response):
        if response.status_code < 400:
            return response
        detail = _detail(response)
        if response.status_code == 401:
            raise AgentRefused(f"the agent at {self.url} refused the token")
        if response.status_code == 503:
            raise AgentBusy(f"the agent at {self.url} is busy: {detail}")
        if response.status_code < 500:
            raise AgentRefused(f"the agent at {self.url} refused the request ({response.status_code}): {detail}")
        raise Failure(f"the agent at {self.url} failed ({response.status_code}): {detail}")


def _engine_files(paths: Path | list[Path]) -> dict[str, Path]:
    """An engine's files by name, the engine first; an OpenVINO IR's .bin added beside its .xml."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    engine = paths[0]
    if engine.suffix == ".xml" and engine.with_suffix(".bin").is_file() and engine.with_suffix(".bin") not in paths:
        paths.append(engine.with_suffix(".bin"))
    return {p.name: p for p in paths}


def job_settings(settings: ProfileSettings | dict | None) -> dict:
    """Measurement settings as a job carries them (JobSettings), checked."""
    if isinstance(settings, ProfileSettings):
        return JobSettings.from_profile_settings(settings).model_dump()
    try:
        return JobSettings(**(settings or {})).model_dump()
    except ValueError as err:
        raise BadInput(f"bad settings: {one_line_error(err)}") from None


def _detail(response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    text = detail if isinstance(detail, str) else json.dumps(detail) if detail else response.text
    return " ".join(str(text).split())[:300] or response.reason_phrase


def _why(err: Exception) -> str:
    text = str(err).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service" in text or "nodename" in text or "name resolution" in text:
        return "unknown host name"
    if "reset" in text or "closed" in text or "disconnected" in text:
        return "the connection was closed"
    return " ".join(str(err).split())[:120] or type(err).__name__
