"""`edgekit fleet build`: every class of a fleet built once per distinct build (content-addressed cache),
judged against its budgets, bundled, signed and exported to the OTA formats whose tools are here.

Builds run in this process (`--executor local`, one after another: measurements need the machine to
themselves; `--jobs N` runs N at once in worker processes when the targets are not measured here) or as
Ray tasks (`--executor ray`: a local Ray instance, or the cluster at $RAY_ADDRESS). A build returns its
files as bytes, so a Ray worker on another machine needs no shared folder. A class that fails does not
stop the others; it is reported with its one-line reason.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edgekit import __version__
from edgekit.budget import judge as judge_budget
from edgekit.budget import judge_latency
from edgekit.compress.shrink import stored_size
from edgekit.data import split
from edgekit.deploy import DeployRequest, deploy, searches_first
from edgekit.errors import BadInput, EdgekitError, Failure, MissingRuntime, require, runtime_message
from edgekit.fleet import bundle as bundles
from edgekit.fleet import ota
from edgekit.fleet.cache import BuildAsk, BuildCache, build_key, model_digest
from edgekit.fleet.manifest import DeviceClass, Fleet
from edgekit.models import load_model
from edgekit.recipes import model_samples
from edgekit.search.loop import SearchRequest, search
from edgekit.targets import load_target

EXECUTORS = ("local", "ray")
SUMMARY = "fleet.json"

Progress = Callable[[str, str], None]  # (class name, what is happening to it now)


@dataclass
class ClassResult:
    name: str
    version: str
    target: str
    state: str = "planned"  # planned, cached, built, failed
    key: str | None = None
    error: str | None = None
    budgets: dict = field(default_factory=dict)
    bundle: str | None = None
    signature: str | None = None
    ota: dict[str, str] = field(default_factory=dict)  # format → file, or "skipped: why"

    @property
    def ok(self) -> bool:
        return self.state in ("cached", "built") and self.error is None


def _one_line(err: BaseException) -> str:
    return str(err) if isinstance(err, EdgekitError) else f"{type(err).__name__}: {runtime_message(err)}"


# ---- planning: what each class is, by content -----------------------------------------------------------

def _identity(klass: DeviceClass) -> dict:
    """Load what the class names and say what it is by content (the cache key's parts)."""
    target = load_target(klass.target, [])
    loaded = load_model(klass.model, list(klass.input_shape))
    samples = model_samples(loaded, klass.data, missing=f"model {klass.model} needs data: give the class a 'data:' "
                            "(calibration and test splits come from it)")
    # what the device is, not what it has now: free storage (the host's is read at run time) and the
    # wording of the sources do not change what is built
    dump = target.model_dump(mode="json", exclude={"file", "storage_mb", "sources"})
    model, data = model_digest(loaded), samples.sha256()
    ask = BuildAsk(klass.precision, klass.budgets.model_dump(), klass.time_limit_s, klass.metric, klass.input_shape)
    key = build_key(model=model, data=data, target=dump, ask=ask, edgekit_version=__version__)
    return {"key": key, "target": target.name, "model_sha256": model,
            "calibration_set_sha256": split(samples).calibration.sha256(), "data_sha256": data}


# ---- one build (runs in this process, a worker process, or a Ray task) ----------------------------------

def build_job(job: dict) -> dict:
    """Build one class's engine as `edgekit deploy` would (the search first where the budgets call for it);
    return the shipped files as bytes and the record the bundle's manifest is written from."""
    klass = DeviceClass.model_validate(job["class"])
    with tempfile.TemporaryDirectory(prefix="edgekit-fleet-") as tmp:
        run_dir, search = _build(klass, Path(tmp))
        report = json.loads((run_dir / "report.json").read_text())
        files = {}
        for name in report["artifacts"].get("engine_files", []):
            path = run_dir / name
            for each in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if each.is_file() and "__pycache__" not in each.parts:
                    files[each.relative_to(run_dir).as_posix()] = each.read_bytes()
        if not files:
            raise Failure(f"the build of {klass.target} shipped no engine file")
    report.pop("run_dir", None)
    return {"files": files, "record": {"report": report, "search": search, **job["identity"]}}


def _build(klass: DeviceClass, folder: Path) -> tuple[Path, dict | None]:
    budgets = klass.budgets
    if searches_first(klass.model, budgets.latency_ms, budgets.flash_mb):
        result = search(SearchRequest(target=klass.target, latency_budget_ms=budgets.latency_ms, model=klass.model,
                                      data=klass.data, out=folder / "search", memory_budget_mb=budgets.memory_mb,
                                      flash_budget_mb=budgets.flash_mb, max_accuracy_drop=budgets.max_accuracy_drop,
                                      time_limit_s=klass.time_limit_s, metric=klass.metric))
        summary = {"budget": result.budget.as_dict(), "accuracy": result.accuracy.as_dict(),
                   "latency_ms": result.latency.as_dict(), "chosen": result.chosen.as_dict(), "seconds": result.seconds}
        return Path(result.chosen.run_dir), json.loads(json.dumps(summary, default=str))
    deploy(DeployRequest(target=klass.target, model=klass.model, data=klass.data, out=folder / "run",
                         input_shapes=tuple(klass.input_shape),
                         precision=klass.precision, latency_budget_ms=budgets.latency_ms, metric=klass.metric))
    return folder / "run", None


# ---- budgets ---------------------------------------------------------------------------------------------

def judge(klass: DeviceClass, folder: Path, record: dict) -> dict:
    """Each budget the class sets, against the build: the value, how it was obtained, met or not (a predicted
    latency whose bound crosses the budget is "uncertain": it ships, said so, and only a missed budget fails)."""

    report, budgets, out = record["report"], klass.budgets, {}
    latency = report.get("latency_ms") or {}
    if budgets.latency_ms is not None:
        out["latency_ms"] = judge_latency("latency_ms", budgets.latency_ms, latency).as_dict()
    if budgets.memory_mb is not None:
        memory = (report.get("predicted_memory_mb") or {}).get("total_mb")
        out["memory_mb"] = judge_budget("memory_mb", budgets.memory_mb, memory, "predicted").as_dict()
    if budgets.flash_mb is not None:
        size = stored_size(sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "build.json"))
        out["flash_mb"] = judge_budget("flash_mb", budgets.flash_mb, round(size.compressed_mb, 6), "measured (xz)").as_dict()
    accuracy = report.get("accuracy") or {}
    drop = None
    if accuracy.get("metric"):
        drop = round(accuracy["metric"]["drop"], 4)
    elif accuracy.get("test") is not None and accuracy.get("reference") is not None:
        drop = round(100 * (accuracy["reference"] - accuracy["test"]), 4)
    elif accuracy.get("agreement") is not None:
        drop = round(100 * (1 - accuracy["agreement"]), 4)
    why = None if drop is not None else "no accuracy: the model's arithmetic cannot run here and no device measured it"
    verdict = judge_budget("max_accuracy_drop", budgets.max_accuracy_drop, drop, accuracy.get("where", "measured"), why)
    out["max_accuracy_drop"] = {**verdict.as_dict(), "metric": (accuracy.get("metric") or {}).get(
        "name", "top1" if accuracy.get("test") is not None else "agreement")}
    return out


# ---- the fleet ---------------------------------------------------------------------------------------------

def build_fleet(fleet: Fleet, out: Path, *, executor: str = "local", jobs: int = 1, cache: BuildCache | None = None,
                key_path: Path | None = None, progress: Progress = lambda name, what: None) -> dict:
    if executor not in EXECUTORS:
        raise BadInput(f"--executor must be one of {', '.join(EXECUTORS)}, got '{executor}'")
    if jobs < 1:
        raise BadInput(f"--jobs must be positive, got {jobs}")
    cache = cache or BuildCache()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key_path = Path(key_path or fleet.key_path()).expanduser()
    made_key = False
    if not key_path.exists():
        bundles.keygen(key_path)
        made_key = True

    results = {name: ClassResult(name, klass.version, klass.target) for name, klass in fleet.classes.items()}
    identities: dict[str, dict] = {}
    for name, klass in fleet.classes.items():
        progress(name, "resolving the model, data and target")
        try:
            identities[name] = _identity(klass)
            results[name].key = identities[name]["key"]
        except Exception as err:  # the class's own input: reported, the others go on
            _fail(results[name], err, progress)

    todo: dict[str, dict] = {}  # key → job, one per distinct build
    for name, identity in identities.items():
        if cache.entry(identity["key"]) is not None:
            results[name].state = "cached"
            progress(name, "cached: nothing changed, not rebuilt")
        elif identity["key"] not in todo:
            todo[identity["key"]] = {"class": fleet.classes[name].model_dump(mode="json"), "identity": identity, "names": [name]}
        else:
            todo[identity["key"]]["names"].append(name)
    for job in todo.values():
        for name in job["names"]:
            progress(name, "building" if name == job["names"][0] else f"same build as {job['names'][0]}")

    for key, outcome in _run(todo, executor, jobs):
        names = todo[key]["names"]
        if isinstance(outcome, BaseException):
            for name in names:
                _fail(results[name], outcome, progress)
            continue
        cache.store(key, outcome["files"], outcome["record"])
        for name in names:
            results[name].state = "built"
            progress(name, "built")

    for name, result in results.items():
        if result.state not in ("cached", "built"):
            continue
        try:
            _ship(fleet, fleet.classes[name], result, cache.entry(result.key), out, key_path, progress)
        except Exception as err:
            _fail(result, err, progress)

    summary = {"fleet": fleet.fleet, "manifest": fleet.file, "key": str(key_path), "public_key": str(key_path) + ".pub",
               "made_key": made_key, "executor": executor, "built": sum(r.state == "built" for r in results.values()),
               "cached": sum(r.state == "cached" for r in results.values()),
               "failed": sum(not r.ok for r in results.values()),
               "classes": {name: dataclasses.asdict(r) for name, r in results.items()}}
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _fail(result: ClassResult, err: BaseException, progress: Progress) -> None:
    result.state, result.error = "failed", _one_line(err)
    progress(result.name, f"FAILED: {result.error}")


def missed_budgets(verdicts: dict) -> list[str]:
    """The budgets a class missed, in words; an uncertain one (a prediction whose bound crosses it) ships."""
    return [f"{k} {v['value']} > {v['budget']}" + (f" ({v['why']})" if v.get("why") else "")
            for k, v in verdicts.items() if v.get("verdict", "met" if v["met"] else "missed") == "missed"]


def _ship(fleet: Fleet, klass: DeviceClass, result: ClassResult, folder: Path, out: Path, key_path: Path,
          progress: Progress) -> None:
    """Judge the budgets, then bundle, sign and export the class (only a build within its budgets ships)."""
    record = BuildCache.record(folder)
    result.budgets = judge(klass, folder, record)
    missed = missed_budgets(result.budgets)
    if missed:
        raise Failure(f"budget not met: {'; '.join(missed)} (nothing shipped)")
    report = record["report"]
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "build.json"}
    manifest = {
        "fleet": fleet.fleet, "class": result.name, "version": klass.version, "devices": list(klass.devices),
        "target": report["target"], "model": {"spec": report["model"]["spec"], "name": report["model"]["name"],
                                              "sha256": record["model_sha256"]},
        "runtime": {"backend": report["backend"], "versions": report.get("versions", {})},
        "engine": report["artifacts"].get("engine"),
        "plan": report.get("precision", {}),
        "calibration_set_sha256": record["calibration_set_sha256"], "data_sha256": record["data_sha256"],
        "profile": {"latency_ms": report.get("latency_ms"), "accuracy": report.get("accuracy"),
                    "memory_mb": report.get("predicted_memory_mb"), "device": report.get("device")},
        "budgets": result.budgets, "search": record.get("search"), "build_key": result.key,
        "edgekit": report.get("edgekit"),
    }
    stem = f"{result.name}-{klass.version}"
    path = bundles.write_bundle(out / f"{stem}.tar", files, manifest)
    sig = bundles.sign(path, key_path)
    bundles.verify(path, key_path)  # what ships has been checked once
    result.bundle, result.signature = str(path), str(sig)
    progress(result.name, "bundled and signed")
    for kind in fleet.ota:
        try:
            result.ota[kind] = str(ota.export(kind, path, sig, name=result.name, version=klass.version,
                                              target=report["target"]["name"], key_path=key_path))
            progress(result.name, f"exported {kind}")
        except MissingRuntime as err:
            result.ota[kind] = f"skipped: {err}"


def _run(todo: dict[str, dict], executor: str, jobs: int):
    """(key, outcome) for every job as it finishes; the outcome is the job's result or its exception."""
    if not todo:
        return
    if executor == "ray":
        yield from _run_ray(todo)
        return
    if jobs == 1 or len(todo) == 1:
        for key, job in todo.items():
            try:
                yield key, build_job(job)
            except Exception as err:
                yield key, err
        return

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(build_job, job): key for key, job in todo.items()}
        from concurrent.futures import as_completed

        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except Exception as err:
                yield futures[future], err


def _run_ray(todo: dict[str, dict]):
    """The builds as Ray tasks: the cluster at $RAY_ADDRESS, else a local Ray instance for this run."""
    ray = require("ray", "ray")
    started = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": max(1, os.cpu_count() or 1)}))
        started = True
    try:
        task = ray.remote(num_cpus=1)(build_job)
        pending = {task.remote(job): key for key, job in todo.items()}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            key = pending.pop(done[0])
            try:
                yield key, ray.get(done[0])
            except Exception as err:  # RayTaskError wraps the build's own error
                cause = getattr(err, "cause", None)
                yield key, cause if isinstance(cause, BaseException) else Failure(runtime_message(err))
    finally:
        if started:
            ray.shutdown()
