"""Files and folders the user names: their YAML read, keys, tokens and signatures written, output folders
checked. Whatever the operating system answers (not UTF-8, no permission, a folder where a file should
be, a file where a folder should be) is one BadInput line naming the file, never a traceback; a loader
or a command calls these instead of catching OSError itself."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from edgekit.errors import BadInput

# What the user can change by naming another path; other OSErrors (a full disk) are failures, not input.
_USER_PATH_ERRORS = (FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def read_bytes(path: Path, what: str) -> bytes:
    path = Path(path).expanduser()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise BadInput(f"{what} {path} is a folder; name a file") from None
    except OSError as err:
        raise BadInput(f"cannot read {what} {path}: {err.strerror or err}") from None


def read_text(path: Path, what: str) -> str:
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadInput(f"{what} {path}: not UTF-8 text (byte {err.start} is 0x{data[err.start]:02x}); "
                       "give a text file") from None


def read_yaml(path: Path, what: str) -> Any:
    """The YAML (or JSON) in a user's file, as plain Python data; its shape is the caller's to check."""
    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())[:160]
        raise BadInput(f"{what} {Path(path)}: not valid YAML ({where}{problem})") from None


def check_folder(path: Path, option: str) -> Path:
    """A folder to write into, made later if missing: refused now (before any work) when it, or a folder
    above it, is a file, or when the nearest existing one is not writable."""
    path = Path(path).expanduser()
    for part in (path, *path.parents):
        if not part.exists():
            continue
        if not part.is_dir():
            raise BadInput(f"{option} {path}: {part} is a file; name a folder (it is made if missing)")
        if not os.access(part, os.W_OK | os.X_OK):
            raise BadInput(f"{option} {path}: cannot write in {part} (permission denied); name a folder you can write to")
        break
    return path


def check_new_file(path: Path, what: str) -> Path:
    """A file about to be written (made or replaced): refused when it is a folder, when a folder on its
    way is a file, or when it cannot be written there."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise BadInput(f"{what} {path} is a folder; name a file")
    for part in path.parents:
        if not part.exists():
            continue
        if not part.is_dir():
            raise BadInput(f"{what} {path}: {part} is a file, not a folder")
        if not os.access(part, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise BadInput(f"cannot write {what} {path} (permission denied); name a file in a folder you can write to")
        break
    return path


def write_file(path: Path, data: bytes, what: str, *, mode: int = 0o644) -> Path:
    """Write a file the user named, its folders made, with `mode` even where it existed (O_CREAT keeps an
    old file's mode)."""
    path = check_new_file(path, what)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
    except _USER_PATH_ERRORS as err:  # what the checks above cannot see (root-owned files, a race)
        raise BadInput(f"cannot write {what} {path}: {err.strerror or err}") from None
    return path
