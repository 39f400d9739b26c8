"""The device inventory: which real devices edgekit can measure on, each an edgekit agent at a URL.

    devices:
      - {name: local-agent, target: host, url: "http://127.0.0.1:8700", token_file: ~/.edgekit/token}

Found at `--devices FILE`, else $EDGEKIT_DEVICES, else ./devices.yaml. A token file's relative path is
read from the inventory's folder. Like TVM's RPC tracker keys, the name is what commands ask for; unlike
it, every device says which target (registry entry) it is, so a measurement is never filed under the
wrong device.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.agent.security import load_token
from edgekit.errors import BadInput, EdgekitError
from edgekit.user_files import read_yaml

ENV = "EDGEKIT_DEVICES"
DEFAULT_FILE = "devices.yaml"
LIST_TIMEOUT_S = 3.0  # `devices list` asks each agent once, briefly: a dead one must not hold up the rest


class Device(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    target: str = Field(description="the registry entry this device is (targets/*.yaml name or alias)")
    url: str = Field(description="where its edgekit agent listens, http(s)://host:port")
    token_file: Path = Field(description="file holding the agent's token (relative: to the inventory's folder)")

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises on a port out of range)
        except ValueError as err:
            raise ValueError(f"url {url!r} is not a valid URL ({err})") from None
        if not parts.hostname:
            raise ValueError(f"url {url!r} names no host")
        return url.rstrip("/")

    def token(self) -> str:
        return load_token(self.token_file)

    def client(self, *, timeout_s: float = 30.0, retries: int = 3):
        """An AgentClient for this device (its token read now)."""
        from edgekit.agent.client import AgentClient  # numpy and the harness: not to read the inventory

        return AgentClient(self.url, self.token(), timeout_s=timeout_s, retries=retries)


class Inventory(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    devices: tuple[Device, ...] = ()
    file: str = ""

    def get(self, name: str) -> Device:
        for device in self.devices:
            if device.name == name:
                return device
        known = ", ".join(d.name for d in self.devices) or "none"
        raise BadInput(f"no device '{name}' in {self.file or 'the inventory'} (devices: {known})")


def inventory_path(path: Path | str | None = None) -> Path:
    """--devices FILE, else $EDGEKIT_DEVICES, else ./devices.yaml."""
    return Path(path or os.environ.get(ENV) or DEFAULT_FILE).expanduser()


def load_inventory(path: Path | str | None = None) -> Inventory:
    where = inventory_path(path)
    if not where.is_file():
        how = "--devices" if path else f"${ENV}" if os.environ.get(ENV) else f"./{DEFAULT_FILE}"
        raise BadInput(f"device inventory not found: {where} (from {how}; it lists devices as "
                       "devices: [{name, target, url, token_file}])")
    data = read_yaml(where, "device inventory") or {}
    if not isinstance(data, dict):
        raise BadInput(f"{where}: expected a mapping with a 'devices' list")
    entries = data.get("devices") or ()
    if isinstance(entries, list):
        base = where.resolve().parent
        entries = [_with_token_path(entry, base) for entry in entries]
    try:
        inventory = Inventory.model_validate({"devices": entries, "file": str(where)})
    except ValidationError as err:
        first = err.errors()[0]
        place = ".".join(str(p) for p in first["loc"])
        raise BadInput(f"{where}: {place}: {first['msg'].removeprefix('Value error, ')}") from None
    names = [d.name for d in inventory.devices]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise BadInput(f"{where}: device name(s) listed twice: {', '.join(duplicated)}")
    return inventory


def _with_token_path(entry, base: Path):
    if not isinstance(entry, dict) or "token_file" not in entry:
        return entry
    token = Path(str(entry["token_file"])).expanduser()
    return {**entry, "token_file": token if token.is_absolute() else base / token}


def status(device: Device, *, timeout_s: float = LIST_TIMEOUT_S) -> dict:
    """Whether the device's agent answers, and what it reports (for `edgekit devices list`)."""
    row = {"name": device.name, "target": device.target, "url": device.url}
    try:
        with device.client(timeout_s=timeout_s, retries=0) as client:
            info = client.info()
    except EdgekitError as err:
        return {**row, "answers": False, "error": str(err)}
    return {**row, "answers": True, "hostname": info.get("hostname"), "runtimes": info.get("runtimes"),
            "edgekit": info.get("edgekit_version"), "queue": info.get("queue")}
