"""The fleet's content-addressed build cache: one build per distinct (model, data, target, precision,
budgets, edgekit version), keyed by the sha256 of what those are, not of what they are called.

The model counts by its weights and structure (a retrained model under the same spec is a new build),
the data by its arrays, the target by its resolved registry entry (a changed YAML is a new build).
A build is stored under KEY/ once complete (written to a temporary folder, then renamed), so a killed
build never leaves a half entry that a later run would take for done.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgekit.util import cache_dir

DONE = "build.json"  # written last: the entry is complete


def model_digest(loaded) -> str:
    """What the model is: a PyTorch module's class structure and every parameter and buffer; an ONNX
    file's bytes."""
    if loaded.kind != "torch":
        return loaded.sha256
    digest = hashlib.sha256(str(loaded.module).encode())
    for name, tensor in sorted(loaded.module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class BuildAsk:
    """What a device class asks of its build beyond the model, data and target: each part changes
    what is built, so each is part of the key."""

    precision: str | None
    budgets: dict
    time_limit_s: float
    metric: str | None = None
    input_shape: tuple[str, ...] = ()


def build_key(*, model: str, data: str, target: dict, ask: BuildAsk, edgekit_version: str) -> str:
    budgets = ask.budgets
    identity = {"model": model, "data": data, "target": target, "precision": ask.precision, "budgets": budgets,
                "time_limit_s": ask.time_limit_s if any(budgets.get(k) for k in ("latency_ms", "flash_mb")) else None,
                "edgekit": edgekit_version,  # what only some classes say, only when said (older keys stay valid)
                **({"metric": ask.metric} if ask.metric else {}),
                **({"input_shape": list(ask.input_shape)} if ask.input_shape else {})}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


class BuildCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else cache_dir() / "fleet-builds"

    def entry(self, key: str) -> Path | None:
        """The stored build's folder, or None if this key was never built completely."""
        folder = self.root / key
        return folder if (folder / DONE).is_file() else None

    def store(self, key: str, files: dict[str, bytes], record: dict) -> Path:
        """Keep a finished build: its files (relative name → bytes) and its record (report and more)."""
        final = self.root / key
        tmp = self.root / f".{key}.part"
        shutil.rmtree(tmp, ignore_errors=True)
        for name, data in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / DONE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final

    @staticmethod
    def record(folder: Path) -> dict:
        return json.loads((folder / DONE).read_text())
