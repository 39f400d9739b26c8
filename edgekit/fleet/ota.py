"""A signed bundle in the OTA formats fleets already run, each made and checked by its own tool and signed
with its own key (kept beside the fleet's ed25519 key, made on first use):

- Mender (`mender-artifact`): a module-image artifact of type `edgekit-bundle` (the device's update module
  runs `edgekit bundle verify` and installs), signed with ECDSA P-256; checked by `mender-artifact validate -k`.
- RAUC (`rauc`): a bundle with the edgekit bundle as the `appfs` image, CMS-signed with a self-signed X.509
  certificate (the device's keyring); `plain` format, so `rauc info --keyring` checks every byte (the
  verity format leaves the payload to dm-verity at install time).
- SWUpdate (`swugenerator` writes it, `swupdate -c` checks it): the bundle and its signature as files with
  sha256 in sw-description, CMS-signed; hardware compatibility is the target name, revision 1.0
  (`swupdate -H TARGET:1.0`, or /etc/hwrevision on the device).
A format whose tool is not on PATH is skipped with the reason (MissingRuntime); nothing is faked.
"""

from __future__ import annotations

import datetime as dt
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgekit.errors import BadInput, Failure, MissingRuntime, require

TOOLS = {"mender": ("mender-artifact",), "rauc": ("rauc", "mksquashfs"), "swupdate": ("swugenerator", "swupdate")}
SUFFIX = {"mender": ".mender", "rauc": ".raucb", "swupdate": ".swu"}
MENDER_TYPE = "edgekit-bundle"
HW_REVISION = "1.0"
TIMEOUT_S = 120


def export(kind: str, bundle: Path, signature: Path, *, name: str, version: str, target: str, key_path: Path) -> Path:
    """Write the OTA artifact of `kind` beside the bundle and check it with the format's own tool."""
    tools = TOOLS.get(kind)
    if tools is None:
        raise BadInput(f"unknown OTA format '{kind}' (known: {', '.join(TOOLS)})")
    missing = [t for t in tools if _which(t) is None]
    if missing:
        raise MissingRuntime(f"{kind} needs {' and '.join(missing)} on PATH (Debian: apt install "
                             f"{'mender-artifact' if kind == 'mender' else 'rauc squashfs-tools' if kind == 'rauc' else 'swupdate'}"
                             f"{'; pip install swugenerator' if kind == 'swupdate' else ''})")
    out = Path(bundle).with_suffix(SUFFIX[kind])
    keys = ota_keys(kind, key_path)
    writer = {"mender": _mender, "rauc": _rauc, "swupdate": _swupdate}[kind]
    writer(Path(bundle), Path(signature), out, name=name, version=version, target=target, keys=keys)
    verify(kind, out, key_path, target=target)
    return out


def verify(kind: str, path: Path, key_path: Path, *, target: str) -> None:
    """The format's own check of the artifact's signature and contents; Failure with its message if refused."""
    keys = ota_keys(kind, key_path)
    if kind == "mender":
        _run(["mender-artifact", "validate", str(path), "-k", str(keys["public"])], f"mender-artifact refused {path.name}")
    elif kind == "rauc":
        _run(["rauc", "info", "--keyring", str(keys["cert"]), str(path)], f"rauc refused {path.name}")
    elif kind == "swupdate":
        # its control and progress sockets go to $TMPDIR: a folder of its own, so a check never meets
        # another swupdate's sockets (or a device's running daemon) and waits on them
        with tempfile.TemporaryDirectory(prefix="edgekit-swupdate-") as tmp:
            _swupdate_check(["swupdate", "-H", f"{target}:{HW_REVISION}", "-c", "-i", str(path), "-k", str(keys["cert"])],
                            f"swupdate refused {path.name}", {"TMPDIR": tmp, "SOCKET_PROGRESS_PATH": f"{tmp}/swupdateprog"})
    else:
        raise BadInput(f"unknown OTA format '{kind}'")


# ---- writers ------------------------------------------------------------------------------------------

def _mender(bundle: Path, signature: Path, out: Path, *, name: str, version: str, target: str, keys: dict) -> None:
    out.unlink(missing_ok=True)
    _run(["mender-artifact", "write", "module-image", "-T", MENDER_TYPE, "-t", target, "-n", f"{name}-{version}",
          "--software-name", name, "--software-version", version, "-f", str(bundle), "-f", str(signature),
          "-k", str(keys["private"]), "-o", str(out)], "mender-artifact could not write the artifact")


def _rauc(bundle: Path, signature: Path, out: Path, *, name: str, version: str, target: str, keys: dict) -> None:
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "content"
        folder.mkdir()
        shutil.copyfile(bundle, folder / bundle.name)
        shutil.copyfile(signature, folder / signature.name)
        (folder / "manifest.raucm").write_text(
            f"[update]\ncompatible=edgekit-{target}\nversion={version}\ndescription=edgekit {name}\n\n"
            f"[bundle]\nformat=plain\n\n[image.appfs]\nfilename={bundle.name}\n")
        _run(["rauc", "bundle", "--cert", str(keys["cert"]), "--key", str(keys["private"]), str(folder), str(out)],
             "rauc could not write the bundle")


def _swupdate(bundle: Path, signature: Path, out: Path, *, name: str, version: str, target: str, keys: dict) -> None:
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "artifacts"
        folder.mkdir()
        for each in (bundle, signature):
            shutil.copyfile(each, folder / each.name)
        entries = ",\n".join(
            f'\t\t{{\n\t\t\tfilename = "{f.name}";\n\t\t\tpath = "/var/lib/edgekit/{f.name}";\n'
            f'\t\t\tsha256 = "$swupdate_get_sha256({f.name})";\n\t\t}}' for f in (bundle, signature))
        description = Path(tmp) / "sw-description"
        description.write_text(
            f'software =\n{{\n\tversion = "{version}";\n\tdescription = "edgekit {name} for {target}";\n'
            f'\thardware-compatibility: [ "{HW_REVISION}" ];\n\tfiles: (\n{entries}\n\t);\n}}\n')
        _run([_which("swugenerator"), "-s", str(description), "-a", str(folder), "-o", str(out), "-n",
              "-k", f"CMS,{keys['private']},{keys['cert']}", "create"], "swugenerator could not write the .swu")


# ---- keys ---------------------------------------------------------------------------------------------

def ota_keys(kind: str, key_path: Path) -> dict[str, Path]:
    """The format's signing material beside the fleet key (KEY.mender.pem, KEY.rauc.cert.pem, ...),
    made on first use: Mender takes ECDSA P-256, RAUC and SWUpdate CMS with an X.509 certificate."""
    base = Path(key_path).expanduser()
    if kind == "mender":
        keys = {"private": base.with_name(base.name + ".mender.pem"), "public": base.with_name(base.name + ".mender.pub.pem")}
    else:
        keys = {"private": base.with_name(base.name + f".{kind}.key.pem"), "cert": base.with_name(base.name + f".{kind}.cert.pem")}
    if not all(p.exists() for p in keys.values()):
        _make_keys(kind, keys, common_name=f"edgekit {kind} {base.stem}")
    return keys


def _make_keys(kind: str, keys: dict[str, Path], *, common_name: str) -> None:
    serialization = require("cryptography.hazmat.primitives.serialization", "fleet")
    ec = require("cryptography.hazmat.primitives.asymmetric.ec", "fleet")
    rsa = require("cryptography.hazmat.primitives.asymmetric.rsa", "fleet")
    if kind == "swupdate":  # SWUpdate's CMS check as Debian builds it: RSA, code-signing purpose
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    fmt = serialization.PrivateFormat.TraditionalOpenSSL if kind == "mender" else serialization.PrivateFormat.PKCS8
    private = keys["private"]
    private.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    if kind == "mender":
        keys["public"].write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                 serialization.PublicFormat.SubjectPublicKeyInfo))
    else:
        keys["cert"].write_bytes(_self_signed(key, common_name).public_bytes(serialization.Encoding.PEM))


def _self_signed(key, common_name: str):
    x509 = require("cryptography.x509", "fleet")
    hashes = require("cryptography.hazmat.primitives.hashes", "fleet")
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))


# ---- running the tools --------------------------------------------------------------------------------

def _which(tool: str) -> str | None:
    """The tool on PATH, or beside this Python (swugenerator installs into the virtualenv)."""
    found = shutil.which(tool)
    if found is None:
        beside = Path(sys.executable).parent / tool
        found = str(beside) if beside.is_file() else None
    return found


def _swupdate_check(command: list[str], what: str, env: dict[str, str]) -> None:
    """`swupdate -c`, judged by its log as it comes: its exit status races with its own helper processes
    (1 after "SWUPDATE successful" about one run in six here) and it sometimes stays up after its verdict,
    so the first verdict line decides and the process group is then stopped."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, **env}, start_new_session=True)
    selector = selectors.DefaultSelector()
    selector.register(child.stdout, selectors.EVENT_READ)
    deadline, verdict, lines = time.monotonic() + TIMEOUT_S, None, []
    try:
        while verdict is None and time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if "[ERROR]" in line:
                verdict = line.strip()
            elif "SWUPDATE successful" in line:
                verdict = "ok"
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        child.wait()
        selector.close()
        child.stdout.close()
    if verdict != "ok":
        why = verdict or (f"no verdict within {TIMEOUT_S} s" if time.monotonic() >= deadline else
                          (lines[-1] if lines else f"exit status {child.returncode}"))
        raise Failure(f"{what}: {why[:300]}")


def _run(command: list[str], what: str) -> None:
    """Run a tool in its own process group (on a time-out the whole group goes); Failure with its error line."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise Failure(f"{what}: {Path(command[0]).name} did not finish within {TIMEOUT_S} s") from None
    if child.returncode != 0:
        lines = [line.strip() for line in (stderr + stdout).splitlines() if line.strip()]
        errors = [line for line in lines if any(w in line.lower() for w in ("error", "fail", "wrong"))] or lines
        raise Failure(f"{what}: {errors[-1][:300] if errors else f'exit status {child.returncode}'}")
