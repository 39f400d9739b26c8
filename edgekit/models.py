"""Load a model from a spec: an .onnx file, a TorchScript or ExportedProgram file, or `pkg.module:factory`.

Whatever the form, the result is one `LoadedModel` with named, typed inputs (several inputs and
integer inputs such as token ids and attention masks are first-class) and one example input each.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import BadInput
from edgekit.normalize import normalize
from edgekit.util import import_object, sha256_bytes, sha256_file

DEMO_SPEC = "edgekit.demo:build"
MAX_INPUT_ELEMENTS = 2**31  # one input's elements: beyond this, a typo (an example would not fit in memory)
ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 6: "int32", 7: "int64", 9: "bool", 2: "uint8", 3: "int8"}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class LoadedModel:
    spec: str
    kind: str  # "torch" or "onnx"
    inputs: tuple[InputSpec, ...]
    example: dict[str, np.ndarray]
    sha256: str
    module: Any = field(default=None, repr=False)  # torch.nn.Module-like, for kind == "torch"
    onnx_path: Path | None = None  # for kind == "onnx": the normalised graph (edgekit.normalize)
    source_path: Path | None = None  # for kind == "onnx": the user's file, the reference for checks
    normalization: dict | None = field(default=None, repr=False)  # what normalising the ONNX did

    @property
    def name(self) -> str:
        """A short name for run folders: file stem, or the factory's module (`pkg.encoder:build` → encoder)."""
        if self.spec == DEMO_SPEC:
            return "demo"
        if self.onnx_path is None and ":" in self.spec and not Path(self.spec).exists():
            return self.spec.split(":", 1)[0].rsplit(".", 1)[-1]
        return Path(self.spec).stem


def parse_input_shapes(texts: list[str] | None) -> list[tuple[str | None, tuple[int, ...], str]]:
    """`--input-shape 1,3,224,224` or `ids:1,128:int64` → (name, shape, dtype) triples."""
    out = []
    for text in texts or []:
        parts = text.split(":")
        name = parts[0] if len(parts) > 1 else None
        dims = parts[1] if len(parts) > 1 else parts[0]
        dtype = parts[2] if len(parts) > 2 else "float32"
        try:
            shape = tuple(int(d) for d in dims.split(","))
            np.dtype(dtype)
        except (ValueError, TypeError) as err:
            raise BadInput(f"--input-shape '{text}': expected [NAME:]D1,D2,...[:DTYPE], e.g. ids:1,128:int64") from err
        if any(d <= 0 for d in shape):
            raise BadInput(f"--input-shape '{text}': every dimension must be positive")
        if math.prod(shape) > MAX_INPUT_ELEMENTS:
            raise BadInput(f"--input-shape '{text}': {math.prod(shape):,} elements in one input, more than edgekit "
                           f"takes ({MAX_INPUT_ELEMENTS:,}); check the dimensions")
        out.append((name, shape, dtype))
    return out


def _example_from_shapes(shapes, names: list[str]) -> dict[str, np.ndarray]:
    example = {}
    for i, (name, shape, dtype) in enumerate(shapes):
        name = name or (names[i] if i < len(names) else f"input_{i}")
        example[name] = np.ones(shape, dtype) if np.dtype(dtype).kind in "iub" else np.zeros(shape, dtype)
    return example


def _to_numpy_inputs(example: Any, names: list[str]) -> dict[str, np.ndarray]:
    import torch

    if isinstance(example, dict):
        items = list(example.items())
    else:
        seq = example if isinstance(example, (tuple, list)) else (example,)
        items = [(names[i] if i < len(names) else f"input_{i}", t) for i, t in enumerate(seq)]
    out = {}
    for name, value in items:
        if not isinstance(value, (torch.Tensor, np.ndarray)):
            raise BadInput(f"example input '{name}' is a {type(value).__name__}; give tensors or arrays")
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        out[name] = array.astype(np.float32) if array.dtype == np.float64 else array
    return out


def _forward_names(module) -> list[str]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _check_finite_torch(module, spec: str) -> None:
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise BadInput(f"model {spec}: weight '{name}' holds NaN or Inf values")


def _torch_model(module, example: Any, spec: str, digest: str, shapes) -> LoadedModel:
    import torch

    if not isinstance(module, torch.nn.Module):
        raise BadInput(f"model {spec}: expected a torch.nn.Module, got {type(module).__name__}")
    module.eval()
    _check_finite_torch(module, spec)
    names = _forward_names(module)
    if shapes:
        inputs = _example_from_shapes(shapes, names)
    elif example is not None:
        inputs = _to_numpy_inputs(example, names)
    else:
        raise BadInput(f"model {spec}: no example inputs; return (model, example) from the factory or pass --input-shape")
    specs = tuple(InputSpec(n, tuple(a.shape), str(a.dtype)) for n, a in inputs.items())
    return LoadedModel(spec, "torch", specs, inputs, digest, module=module)


def _load_factory(spec: str, shapes) -> LoadedModel:
    factory = import_object(spec, "model factory")
    try:
        result = factory()
    except Exception as err:  # the user's code: any failure is a bad input, said in one line
        raise BadInput(f"model factory {spec} raised {type(err).__name__}: {err}") from err
    module, example = result if isinstance(result, tuple) and len(result) == 2 else (result, None)
    try:
        source = inspect.getsourcefile(factory) or spec
    except TypeError:  # a callable object without Python source (an instance with __call__ in C)
        source = spec
    digest = sha256_file(Path(source)) if Path(source).is_file() else sha256_bytes(spec.encode())
    return _torch_model(module, example, spec, digest, shapes)


def _load_onnx(path: Path, spec: str, shapes) -> LoadedModel:
    """An ONNX file, normalised first (`edgekit.normalize`): what every later step reads is the normalised
    graph; the source file stays the reference its outputs are checked against."""
    import onnx

    normalized = normalize(path, spec, shapes)
    proto = onnx.load(str(normalized.path))
    for init in proto.graph.initializer:
        array = onnx.numpy_helper.to_array(init)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise BadInput(f"model {spec}: weight '{init.name}' holds NaN or Inf values")
    specs = tuple(InputSpec(name, shape, ONNX_DTYPES.get(normalized.dtypes[name], "float32"))
                  for name, shape in normalized.shapes.items())
    example = _example_from_shapes([(s.name, s.shape, s.dtype) for s in specs], [])
    return LoadedModel(spec, "onnx", specs, example, sha256_file(path), onnx_path=normalized.path,
                       source_path=path, normalization=normalized.as_dict())


def _load_torch_file(path: Path, spec: str, shapes) -> LoadedModel:
    import torch

    digest = sha256_file(path)
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as err:
            raise BadInput(f"{spec} is not a loadable ExportedProgram ({type(err).__name__})") from err
        args, kwargs = program.example_inputs or ((), {})
        example = kwargs if kwargs else args
        names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        module = program.module()
        if not shapes and example:
            inputs = _to_numpy_inputs(example, names)
            specs = tuple(InputSpec(n, tuple(a.shape), str(a.dtype)) for n, a in inputs.items())
            _check_finite_torch(module, spec)
            return LoadedModel(spec, "torch", specs, inputs, digest, module=module)
        return _torch_model(module, None, spec, digest, shapes)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise BadInput(f"{spec} is not a loadable TorchScript file ({type(err).__name__})") from err
    if not shapes:
        raise BadInput(f"{spec}: a TorchScript file carries no input shapes; pass --input-shape")
    return _torch_model(module, None, spec, digest, shapes)


def load_model(spec: str | None, input_shapes: list[str] | None = None) -> LoadedModel:
    """Load any supported model spec; no spec means the built-in digits demo."""
    spec = spec or DEMO_SPEC
    shapes = parse_input_shapes(input_shapes)
    path = Path(spec)
    if path.suffix.lower() in (".onnx", ".pt", ".pth", ".ts", ".pt2", ".torchscript"):
        if not path.is_file():
            raise BadInput(f"model file not found: {spec}")
        if path.suffix.lower() == ".onnx":
            return _load_onnx(path, spec, shapes)
        return _load_torch_file(path, spec, shapes)
    if ":" in spec and not path.exists():
        return _load_factory(spec, shapes)
    if path.exists():
        raise BadInput(f"model {spec}: unknown file type '{path.suffix}' (use .onnx, .pt/.ts TorchScript, .pt2 ExportedProgram)")
    raise BadInput(f"model not found: {spec} (give an .onnx / .pt / .pt2 file or package.module:factory)")
