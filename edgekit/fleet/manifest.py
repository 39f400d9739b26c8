"""fleet.yaml: every device class of a fleet, what it runs and the budgets it must meet.

    fleet: demo-fleet
    signing_key: keys/demo-fleet.key      # optional (default ~/.edgekit/keys/FLEET.key, made on first build)
    ota: [mender, rauc, swupdate]          # OTA formats to export where their tools are
    classes:
      gateway:   {target: host, precision: int8, version: 1.2.0, budgets: {max_accuracy_drop: 1.0}}
      camera-pi: {target: rpi5, version: 1.2.0, devices: [pi-lab-1], budgets: {memory_mb: 64}}

Validated (Pydantic) and checked before anything builds: every target is in the registry, every model or
data file exists; each error is one line that names the class.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekit.deploy import choose_precision
from edgekit.devices import DEFAULT_FILE, ENV, inventory_path, load_inventory
from edgekit.errors import BadInput, EdgekitError
from edgekit.metrics import load_metric
from edgekit.remote import check_device
from edgekit.targets import load_target
from edgekit.user_files import read_yaml

NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
VERSION = r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$"  # a file-name-safe version (semver fits)
OTA_FORMATS = ("mender", "rauc", "swupdate")


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Budgets(Strict):
    latency_ms: float | None = Field(None, gt=0, description="p50 on the device; a PyTorch model is searched to meet it")
    memory_mb: float | None = Field(None, gt=0, description="weights + peak activations")
    flash_mb: float | None = Field(None, gt=0, description="the shipped engine's files, compressed (searched for)")
    max_accuracy_drop: float = Field(1.0, ge=0, description="test metric lost against the source model, in the metric's points")


class DeviceClass(Strict):
    target: str
    model: str | None = Field(None, description="model spec as `deploy --model` takes it (default: the demo)")
    data: str | None = Field(None, description="data spec as `deploy --data` takes it (default: the demo's)")
    precision: str | None = Field(None, description="fp32, fp16, int8 or mixed (default: the target's)")
    metric: str | None = Field(None, description="what accuracy means, as `deploy --metric` takes it (default: from the data)")
    input_shape: tuple[str, ...] = Field((), description="NAME:D1,D2,.. as `--input-shape` takes them (an ONNX model's dynamic dims)")
    version: str = Field(pattern=VERSION)
    budgets: Budgets = Budgets()
    devices: tuple[str, ...] = Field((), description="inventory devices of this class (edgekit devices list)")
    time_limit_s: float = Field(600.0, gt=0, description="the search's time limit, where budgets call for one")

    @property
    def searched(self) -> bool:
        return self.budgets.latency_ms is not None or self.budgets.flash_mb is not None


class Fleet(Strict):
    fleet: str = Field(pattern=NAME)
    signing_key: Path | None = None
    devices_file: Path | None = Field(None, description="the inventory the classes' devices are in (default: "
                                                        "$EDGEKIT_DEVICES, else ./devices.yaml, if there)")
    ota: tuple[Literal["mender", "rauc", "swupdate"], ...] = OTA_FORMATS
    classes: dict[str, DeviceClass]
    file: str = Field("", exclude=True)

    @model_validator(mode="after")
    def _names(self) -> Fleet:
        if not self.classes:
            raise ValueError("classes: a fleet needs at least one device class")
        for name in self.classes:
            if not re.fullmatch(NAME, name):
                raise ValueError(f"class name '{name}' must be letters, digits, '-' or '_' (it names files)")
        return self

    def key_path(self) -> Path:
        return Path(self.signing_key).expanduser() if self.signing_key else Path.home() / ".edgekit" / "keys" / f"{self.fleet}.key"


def load_fleet(path: Path | str) -> Fleet:
    """Read and check a fleet manifest; relative paths in it are relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"fleet manifest not found: {path}")
    data = read_yaml(path, "fleet manifest")
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a mapping with 'fleet' and 'classes'")
    base = path.resolve().parent
    for field in ("signing_key", "devices_file"):
        if isinstance(data.get(field), str) and data[field]:
            given = Path(str(data[field])).expanduser()
            data[field] = given if given.is_absolute() else base / given
    for spec in data["classes"].values() if isinstance(data.get("classes"), dict) else ():  # else: Pydantic says what is wrong
        if isinstance(spec, dict):
            for field in ("model", "data"):
                if isinstance(spec.get(field), str) and _is_path(spec[field]) and not Path(spec[field]).is_absolute():
                    spec[field] = str(base / spec[field])
    try:
        fleet = Fleet.model_validate({**data, "file": str(path)})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        klass = first["loc"][1] if len(first["loc"]) > 1 and first["loc"][0] == "classes" else None
        prefix = f"class '{klass}': " if klass else ""
        hint = f" (quote it: '{first['input']}')" if first["type"] == "string_type" and isinstance(first["input"], (int, float)) else ""
        raise BadInput(f"{path}: {prefix}{where}: {first['msg'].removeprefix('Value error, ')}{hint}") from None
    check(fleet)
    return fleet


def _is_path(spec: str) -> bool:
    """A file or folder spec (model.onnx, calib/, data.npz), not a `package.module:factory`."""
    return re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec) is None


def check(fleet: Fleet) -> None:
    """Every class's target resolves and its files exist: one line naming the class otherwise."""
    listed = any(k.devices for k in fleet.classes.values())
    inventory = None
    if listed and (fleet.devices_file or inventory_path()).is_file():
        inventory = load_inventory(fleet.devices_file)
    elif listed and fleet.devices_file:
        raise BadInput(f"{fleet.file}: devices_file not found: {fleet.devices_file}")
    elif listed:
        name = next(n for n, k in fleet.classes.items() if k.devices)
        raise BadInput(f"{fleet.file}: class '{name}' lists devices but there is no inventory to find them in "
                       f"(give devices_file:, set ${ENV}, or put a {DEFAULT_FILE} in the working folder)")
    for name, klass in fleet.classes.items():
        try:
            target = load_target(klass.target, [])
            if klass.precision not in (None, "mixed"):
                choose_precision(klass.precision, target)
            if klass.metric:
                load_metric(klass.metric)
            for field in ("model", "data"):
                spec = getattr(klass, field)
                if spec and _is_path(spec) and not Path(spec).expanduser().exists():
                    raise BadInput(f"{field} not found: {spec}")
            for device in klass.devices if inventory else ():  # each listed device is this class's target
                check_device(inventory.get(device), target, [])
        except EdgekitError as err:
            raise BadInput(f"{fleet.file}: class '{name}': {err}") from None
