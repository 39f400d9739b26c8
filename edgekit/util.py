"""Small helpers shared by every step: atomic writes, hashing, the cache folder."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import multiprocessing
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import platformdirs

from edgekit.errors import BadInput


def cache_dir() -> Path:
    """Where trained demo weights and measured peaks live (EDGEKIT_CACHE_DIR overrides)."""
    override = os.environ.get("EDGEKIT_CACHE_DIR")
    if override:
        path = Path(override)
    else:
        path = Path(platformdirs.user_cache_dir("edgekit"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def fork_server(preload: list[str]):
    """multiprocessing's fork-server context with `preload` imported in the server once: children start
    with those modules loaded, each still its own process. The server is one per process, so its preload
    list is whichever was set before it first started (the agent and the test harness each set one)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)
    return context


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temp file and rename, so a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def import_object(spec: str, what: str):
    """`package.module:name` → that callable, imported from the current folder too (like uvicorn: the user's
    own package beside them); a spec of another form, a module that is missing or fails to import, a
    missing name, or one that is not a Python callable, is one BadInput line naming `what` and `spec`."""
    module_name, _, attr = spec.partition(":")
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module_name) or not attr.isidentifier():
        raise BadInput(f"{what} {spec}: expected package.module:name (the module's full dotted name, "
                       "no leading '.'; a Python name after the ':')")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BadInput(f"{what} {spec}: cannot import module '{module_name}' ({err})") from err
    except Exception as err:  # the user's module failed while importing: their code, one line
        raise BadInput(f"{what} {spec}: importing '{module_name}' raised {type(err).__name__}: {err}") from err
    try:
        found = getattr(module, attr)
    except AttributeError as err:
        raise BadInput(f"{what} {spec}: module '{module_name}' has no '{attr}'") from err
    if not callable(found) or inspect.isbuiltin(found):  # a built-in (os:getcwd) is nobody's factory or metric
        kind = "a built-in function" if callable(found) else f"a {type(found).__name__}"
        raise BadInput(f"{what} {spec} is {kind}; name a Python function")
    return found
