"""Signed, reproducible bundles: `<class>-<version>.tar` (the engine's files and manifest.json, which holds
the sha256 of every file) and `<class>-<version>.tar.sig`, a detached ed25519 signature over the whole tar.

Reproducible: entries sorted by name, every time set to SOURCE_DATE_EPOCH (0 when unset), owner 0:0 with
no names, mode 0644, PAX format, JSON with sorted keys: the same files give the same bytes on any
machine, on any day. Verification checks the signature first, then that the tar holds exactly the
files manifest.json lists, each with its sha256, and nothing that could land outside a folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from edgekit.errors import BadInput, require
from edgekit.user_files import check_new_file, read_bytes, write_file

MANIFEST = "manifest.json"
FORMAT = "edgekit-bundle/1"
SIGNATURE_BYTES = 64  # ed25519


# ---- keys -------------------------------------------------------------------------------------------

def keygen(path: Path, *, force: bool = False) -> tuple[Path, Path]:
    """A new ed25519 key pair: PATH (private, PKCS#8 PEM, mode 0600) and PATH.pub (public, PEM)."""
    serialization = require("cryptography.hazmat.primitives.serialization", "fleet")
    ed25519 = require("cryptography.hazmat.primitives.asymmetric.ed25519", "fleet")
    path = check_new_file(path, "key")
    public = check_new_file(path.with_name(path.name + ".pub"), "public key")  # both checked: never half a pair
    if path.exists() and not force:
        raise BadInput(f"{path} exists: pass --force to replace the key (bundles signed with it then fail to verify)")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    write_file(path, private_pem, "key", mode=0o600)
    write_file(public, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo), "public key")
    return path, public


def _load_key(path: Path):
    serialization = require("cryptography.hazmat.primitives.serialization", "fleet")
    path = Path(path).expanduser()
    if not path.exists():
        raise BadInput(f"key not found: {path} (make one with: edgekit bundle keygen {path})")
    data = read_bytes(path, "key")
    try:
        if b"PRIVATE KEY" in data:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise BadInput(f"{path}: not a PEM key edgekit can use ({' '.join(str(err).split())[:120]})") from None


def private_key(path: Path):
    ed25519 = require("cryptography.hazmat.primitives.asymmetric.ed25519", "fleet")
    key = _load_key(path)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BadInput(f"{path}: signing needs an ed25519 private key (edgekit bundle keygen)")
    return key


def public_key(path: Path):
    """The public key from a .pub file, or derived from the private key."""
    ed25519 = require("cryptography.hazmat.primitives.asymmetric.ed25519", "fleet")
    key = _load_key(path)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BadInput(f"{path}: verifying needs an ed25519 key (edgekit bundle keygen)")
    return key


# ---- writing ----------------------------------------------------------------------------------------

def source_date_epoch() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        return max(int(raw), 0)
    except ValueError:
        raise BadInput(f"SOURCE_DATE_EPOCH must be an integer number of seconds, got {raw!r}") from None


def canonical_json(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode()


def write_bundle(path: Path, files: dict[str, Path], manifest: dict) -> Path:
    """The tar of `files` (name in the bundle → file here) and manifest.json (given fields + the sha256
    and size of every file), written reproducibly."""
    names = sorted(files)
    for name in names:
        _check_member_name(name)
    manifest = {**manifest, "format": FORMAT,
                "files": {name: {"sha256": _sha256(files[name].read_bytes()), "bytes": files[name].stat().st_size}
                          for name in names}}
    mtime = source_date_epoch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in [MANIFEST, *names]:
            data = canonical_json(manifest) if name == MANIFEST else files[name].read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)
    return path


def sign(path: Path, key_path: Path) -> Path:
    """PATH.sig: the raw 64-byte ed25519 signature of the whole file."""
    sig = check_new_file(Path(str(path) + ".sig"), "signature")
    return write_file(sig, private_key(key_path).sign(read_bytes(path, "bundle")), "signature")


# ---- checking ---------------------------------------------------------------------------------------

def verify(path: Path, key_path: Path) -> dict:
    """The bundle's manifest when its signature and every hash check out; BadInput naming what failed."""
    exceptions = require("cryptography.exceptions", "fleet")
    path = Path(path)
    sig = Path(str(path) + ".sig")
    if not path.is_file():
        raise BadInput(f"bundle not found: {path}")
    if not sig.exists():
        raise BadInput(f"{path.name}: no signature beside it ({sig.name})")
    signature = read_bytes(sig, "signature")
    if len(signature) != SIGNATURE_BYTES:
        raise BadInput(f"{sig.name}: not an ed25519 signature ({len(signature)} bytes, expected {SIGNATURE_BYTES})")
    try:
        public_key(key_path).verify(signature, read_bytes(path, "bundle"))
    except exceptions.InvalidSignature:
        raise BadInput(f"{path.name}: the signature does not match (the bundle or its .sig was changed, "
                       "or it was signed with another key)") from None
    return check_contents(path)


def check_contents(path: Path) -> dict:
    """Exactly the files manifest.json lists, each with its sha256; plain files only."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
            contents = {}
            for member in members:
                _check_member_name(member.name)
                if not member.isfile():
                    raise BadInput(f"{path.name}: '{member.name}' is not a plain file")
                if member.name in contents:
                    raise BadInput(f"{path.name}: '{member.name}' appears twice")
                contents[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as err:
        raise BadInput(f"{path.name}: not a readable tar ({err})") from None
    if MANIFEST not in contents:
        raise BadInput(f"{path.name}: no {MANIFEST}")
    try:
        manifest = json.loads(contents.pop(MANIFEST))
        listed = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise BadInput(f"{path.name}: {MANIFEST} is not an edgekit bundle manifest") from None
    if not (isinstance(listed, dict) and all(isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in listed.values())):
        raise BadInput(f"{path.name}: {MANIFEST}'s 'files' must map each file's name to its {{sha256, bytes}}")
    if set(listed) != set(contents):
        extra, missing = sorted(set(contents) - set(listed)), sorted(set(listed) - set(contents))
        raise BadInput(f"{path.name}: files do not match {MANIFEST} (unlisted: {extra or 'none'}, missing: {missing or 'none'})")
    for name, data in contents.items():
        if _sha256(data) != listed[name].get("sha256"):
            raise BadInput(f"{path.name}: {name} does not match its sha256 in {MANIFEST}")
    return manifest


def _check_member_name(name: str) -> None:
    parts = Path(name).parts
    if not name or name.startswith(("/", "\\")) or ".." in parts or any(p.startswith("~") for p in parts[:1]):
        raise BadInput(f"bundle entry '{name}' could land outside its folder")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
