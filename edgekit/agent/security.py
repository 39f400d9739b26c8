"""What the agent trusts: a bearer token compared in constant time, and upload names from a short
list of data formats. The agent never runs code a client sent (no pickles, no Python), only engines
and arrays loaded by their runtimes."""

from __future__ import annotations

import hmac
import re
import secrets
from pathlib import Path

from edgekit.errors import BadInput
from edgekit.user_files import check_new_file, read_text, write_file
from edgekit.util import sha256_file

__all__ = ["UPLOAD_SUFFIXES", "load_token", "new_token_file", "safe_name", "sha256_file", "token_ok"]

# Engines and arrays only; .npy/.npz are read with allow_pickle=False.
UPLOAD_SUFFIXES = (".onnx", ".xml", ".bin", ".tflite", ".json", ".npy", ".npz")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def load_token(path: Path) -> str:
    """The token in `path` (surrounding whitespace dropped): there is no way to run the agent without one."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BadInput(f"token file not found: {path} (make one with `edgekit agent token {path}`)")
    token = read_text(path, "token file").strip()
    if not token:
        raise BadInput(f"the token file {path} is empty (make one with `edgekit agent token {path} --force`)")
    if len(token) < 16:
        raise BadInput(f"the token in {path} is too short ({len(token)} characters; at least 16)")
    return token


def new_token_file(path: Path, *, force: bool = False) -> Path:
    """Write a new random token readable by its owner only (0600); an existing file is kept unless `force`."""
    path = check_new_file(path, "token file")
    if path.exists() and not force:
        raise BadInput(f"{path} exists: pass --force to replace its token")
    return write_file(path, (secrets.token_urlsafe(32) + "\n").encode(), "token file", mode=0o600)


def token_ok(header_value: str | None, token: str) -> bool:
    """Whether an `Authorization: Bearer <token>` header carries the token (constant-time compare)."""
    if not header_value:
        return False
    scheme, _, given = header_value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))


def safe_name(name: str, suffixes: tuple[str, ...] | None = UPLOAD_SUFFIXES) -> str:
    """`name` if it is a plain file name (no folders, no '..') with an allowed suffix, else BadInput.
    `suffixes=None` allows any suffix (names of files the agent built itself)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        shown = repr(name)[:80]
        raise BadInput(f"bad file name {shown}: use letters, digits, '.', '_' and '-' only (no folders, no '..'), "
                       "at most 128 characters")
    if suffixes is not None and not name.lower().endswith(suffixes):
        raise BadInput(f"bad file name '{name}': the agent takes only {' '.join(suffixes)} files")
    return name
