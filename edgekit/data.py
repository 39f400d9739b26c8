"""Calibration / validation / test data: one small type for any source, split once by a seeded rule.

A source is an `.npz`, a folder of `.npy`, an image folder (class sub-folders give labels), or a
`pkg.module:factory`. Samples are matched to the model's named inputs (shape and dtype checked), and
split into three disjoint sets: the search never sees the test split, the calibration never sees
validation or test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import demo
from edgekit.data_checks import check_range, check_samples
from edgekit.errors import BadInput
from edgekit.models import InputSpec
from edgekit.util import import_object, sha256_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".webp")
LABEL_KEYS = ("y", "labels", "label", "targets")
SPLIT_FRACTIONS = (0.2, 0.3, 0.5)  # calibration, validation, test


@dataclass(frozen=True)
class Samples:
    """N samples of every model input (arrays [N, *shape without batch]) and optional labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    warnings: tuple[str, ...] = ()  # weak data (edgekit.data_checks), carried into every report

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def subset(self, index: np.ndarray, part: str) -> Samples:
        labels = None if self.labels is None else self.labels[index]
        return Samples({k: v[index] for k, v in self.inputs.items()}, labels, f"{self.source}[{part}]", self.warnings)

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """One sample as a batch of one, ready for a runtime."""
        return {k: v[i : i + 1] for k, v in self.inputs.items()}

    def sha256(self) -> str:
        parts = [k.encode() + v.tobytes() for k, v in sorted(self.inputs.items())]
        if self.labels is not None:
            parts.append(self.labels.tobytes())
        return sha256_bytes(b"".join(parts))


@dataclass(frozen=True)
class Splits:
    calibration: Samples
    validation: Samples
    test: Samples


def split(samples: Samples, fractions: tuple[float, float, float] = SPLIT_FRACTIONS, seed: int = 0) -> Splits:
    """Three disjoint splits by a seeded permutation; each split keeps at least one sample."""
    n = len(samples)
    if n < 3:
        raise BadInput(f"data {samples.source}: {n} sample(s); at least 3 are needed for calibration, validation and test")
    order = np.random.default_rng(seed).permutation(n)
    n_cal = max(1, int(round(fractions[0] * n)))
    n_val = max(1, int(round(fractions[1] * n)))
    n_cal, n_val = min(n_cal, n - 2), min(n_val, n - 1 - min(n_cal, n - 2))
    cal, val, test = np.split(order, [n_cal, n_cal + n_val])
    return Splits(*(samples.subset(np.sort(i), p) for i, p in ((cal, "calibration"), (val, "validation"), (test, "test"))))


def as_numbers(value, what: str, source: str) -> np.ndarray:
    """An array of numbers (or booleans) from what a file or a factory gave; text, objects, complex
    numbers and ragged lists are one line naming the source."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):  # ragged nested lists
        raise BadInput(f"data {source}: {what} is not a regular array (its items differ in shape); "
                       "give one array [N, ...] of samples that are all the same shape") from None
    if array.dtype.kind not in "biuf":
        held = _KINDS.get(array.dtype.kind, str(array.dtype))
        raise BadInput(f"data {source}: {what} holds {held} ({array.dtype}), not real numbers")
    return array


_KINDS = {"U": "text", "S": "bytes", "O": "Python objects", "c": "complex numbers", "M": "dates", "m": "durations",
          "V": "records"}


def as_labels(value, source: str) -> np.ndarray | None:
    """Labels: numbers, one entry (a class, a mask, ...) per sample, all finite; None: no labels."""
    if value is None:  # a factory's (inputs, None)
        return None
    labels = as_numbers(value, "labels", source)
    if labels.ndim == 0:
        raise BadInput(f"data {source}: labels is a single value ({labels}); give one label per sample")
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise BadInput(f"data {source}: labels hold NaN or Inf values")
    return labels


def from_arrays(arrays: dict[str, np.ndarray], specs: tuple[InputSpec, ...], source: str) -> Samples:
    """Match named (or single) arrays to the model's inputs, check shapes and dtypes."""
    arrays = dict(arrays)
    labels = as_labels(next((arrays.pop(k) for k in LABEL_KEYS if k in arrays), None), source)
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name in arrays:
            array = arrays[spec.name]
        elif len(specs) == 1 and len(arrays) == 1:
            array = next(iter(arrays.values()))
        elif len(specs) == 1 and any(k in arrays for k in ("x", "inputs", "input")):
            array = next(arrays[k] for k in ("x", "inputs", "input") if k in arrays)
        else:
            raise BadInput(f"data {source}: no array for model input '{spec.name}' (found: {', '.join(arrays) or 'none'})")
        inputs[spec.name] = _conform(as_numbers(array, f"input '{spec.name}'", source), spec, source)
    counts = {len(a) for a in inputs.values()}
    if len(counts) != 1:
        raise BadInput(f"data {source}: inputs have different sample counts {sorted(counts)}")
    if labels is not None and len(labels) != counts.pop():
        raise BadInput(f"data {source}: {len(labels)} labels for {len(next(iter(inputs.values())))} samples")
    if len(next(iter(inputs.values()))) == 0:
        raise BadInput(f"data {source}: no samples")
    return Samples(inputs, labels, source, check_samples(inputs, source))


def _conform(array: np.ndarray, spec: InputSpec, source: str) -> np.ndarray:
    sample_shape = spec.shape[1:] if len(spec.shape) > 0 and spec.shape[0] == 1 else spec.shape
    if array.shape == tuple(sample_shape):
        array = array[None]
    if tuple(array.shape[1:]) != tuple(sample_shape):
        raise BadInput(
            f"data {source}: input '{spec.name}' samples have shape {tuple(array.shape[1:])}, "
            f"the model expects {tuple(sample_shape)}"
        )
    want = np.dtype(spec.dtype)
    if want.kind in "iub" and array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise BadInput(f"data {source}: input '{spec.name}' is {spec.dtype} but the data holds non-integer values")
    if want.kind == "f" and array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise BadInput(f"data {source}: input '{spec.name}' holds NaN or Inf values")
    check_range(array, want, spec.name, source)
    return np.ascontiguousarray(array.astype(want, copy=False))


def _unreadable(path: Path, what: str, err: Exception) -> BadInput:
    if path.is_file() and path.stat().st_size == 0:
        why = "the file is empty"
    elif "pickle" in str(err):
        why = "it holds pickled Python objects; edgekit reads plain arrays of numbers only"
    else:
        why = " ".join(str(err).split())[:160] or type(err).__name__
    return BadInput(f"data {path}: not a readable {what} ({why})")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """An .npz's arrays by name (never pickles)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError) as err:  # EOFError: an empty file (click would print only "Aborted.")
        raise _unreadable(path, ".npz archive", err) from None


def _npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise _unreadable(path, ".npy array", err) from None
    if not isinstance(array, np.ndarray):  # np.load reads an .npz by its contents, whatever the suffix
        array.close()
        raise BadInput(f"data {path}: an .npz archive named .npy; name it .npz")
    return array


def _npy_folder(folder: Path, files: list[Path]) -> dict[str, np.ndarray]:
    arrays = [_npy(f) for f in files if f.name != "labels.npy"]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise BadInput(f"data {folder}: .npy files have different shapes {sorted(shapes)[:3]}")
    out = {"x": np.stack(arrays)}
    if (folder / "labels.npy").is_file():
        out["labels"] = _npy(folder / "labels.npy")
    return out


def _image_folder(folder: Path, spec: InputSpec) -> dict[str, np.ndarray]:
    """Images resized to the input's H x W, scaled to [0, 1], NCHW; class sub-folders (one level, no
    deeper) become labels, and then every image must be in one."""
    from PIL import Image

    if len(spec.shape) != 4 or spec.shape[1] not in (1, 3):
        raise BadInput(f"data {folder}: image folders need a model input shaped N,C,H,W with C 1 or 3, not {spec.shape}")
    _, channels, height, width = spec.shape
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    entries = [(f, i) for i, c in enumerate(classes) for f in sorted((folder / c).iterdir())] if classes else [
        (f, -1) for f in sorted(folder.iterdir())
    ]
    entries = [(f, label) for f, label in entries if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if classes:
        loose = [f.name for f in sorted(folder.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        empty = [c for i, c in enumerate(classes) if not any(label == i for _, label in entries)]
        if loose:
            raise BadInput(f"data {folder}: images beside class folders ({loose[0]}, ...): put every image in its "
                           f"class folder ({', '.join(classes[:3])}), or use a folder without sub-folders")
        if empty:
            raise BadInput(f"data {folder}: class folder(s) {', '.join(empty[:3])} hold no images (class folders "
                           "hold the images themselves, one level down, no deeper)")
    images = []
    for path, _ in entries:
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB").resize((width, height))
                array = np.asarray(image, dtype=np.float32) / 255.0
        except OSError as err:
            raise BadInput(f"data {path}: not a readable image ({err})") from err
        images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
    out = {"x": np.stack(images)}
    if classes:
        out["labels"] = np.array([label for _, label in entries], dtype=np.int64)
    return out


def factory_arrays(factory, spec: str, what: str, **kwargs) -> dict:
    """What a user's data factory returns, as named arrays (inputs, and "labels" when it gave
    (inputs, labels)); its failures are one line naming it."""
    try:
        result = factory(**kwargs)
    except Exception as err:  # the user's code: any failure is a bad input, said in one line
        raise BadInput(f"{what} {spec} raised {type(err).__name__}: {err}") from err
    if isinstance(result, dict):
        return dict(result)
    if isinstance(result, tuple) and len(result) == 2:
        inputs, labels = result
        arrays = dict(inputs) if isinstance(inputs, dict) else {"x": inputs}
        return {**arrays, "labels": labels}
    return {"x": result}


def load_data(spec: str, inputs: tuple[InputSpec, ...]) -> Samples:
    """Read a data source and match it to the model's inputs."""
    path = Path(spec)
    if path.is_file():
        if path.suffix == ".npz":
            return from_arrays(read_npz(path), inputs, spec)
        if path.suffix == ".npy":
            return from_arrays({"x": _npy(path)}, inputs, spec)
        raise BadInput(f"data {spec}: unknown file type '{path.suffix}' (use .npz, .npy, a folder, or pkg.module:factory)")
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        npys = [f for f in files if f.suffix == ".npy" and f.parent == path]
        if npys and [f for f in npys if f.name != "labels.npy"]:
            return from_arrays(_npy_folder(path, npys), inputs, spec)
        if any(f.suffix.lower() in IMAGE_SUFFIXES for f in files):
            if len(inputs) != 1:
                raise BadInput(f"data {spec}: an image folder feeds one input; the model has {len(inputs)}")
            return from_arrays(_image_folder(path, inputs[0]), inputs, spec)
        raise BadInput(f"data folder {spec} holds no .npy or image files")
    if ":" in spec and not path.exists():
        return from_arrays(factory_arrays(import_object(spec, "data factory"), spec, "data factory"), inputs, spec)
    raise BadInput(f"data not found: {spec}")


def demo_data(inputs: tuple[InputSpec, ...]) -> Samples:
    x, y = demo.data()
    return from_arrays({"x": x, "labels": y}, inputs, "demo digits (held out from training)")
