"""A foreign ONNX file made ready for every later step, with a maintained tool rather than hand code.

Other exporters write what edgekit's own export never does: weights in `Constant` nodes (Paddle2ONNX),
initializers listed again as graph inputs (old exporters), dynamic dimensions named by the exporter
(`p2o.DynamicDimension.0`, `-1`, `?`), batch norms left unfused, old opsets. Calibration, the Q/DQ
writer, the cost model and every backend read a graph with weights as initializers, static shapes and
an opset that has per-channel Q/DQ (13). onnxslim does the work: constant folding, `Constant` →
initializer, shape fixing, fusions (measured against onnxsim and ONNX Runtime's `quant_pre_process` on
the PP-OCR files: onnxslim alone turned every weight into an initializer on all three; onnxsim left up
to 197 `Constant` nodes; `quant_pre_process` cannot fix a `-1` dimension). The result is checked
against the source model in ONNX Runtime, cached by content, and saved in the run directory.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import BadInput, Failure, runtime_message
from edgekit.output_check import ATOL, RTOL, compare_outputs
from edgekit.util import atomic_write_bytes, cache_dir, sha256_bytes

MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) needs opset 13
# Domains whose ops a runtime here knows: ONNX's own (checked against its schemas) and ONNX Runtime's.
RUNTIME_DOMAINS = ("com.microsoft",)
VERSION = 1  # of this normalisation: part of the cache key


@dataclass(frozen=True)
class Normalized:
    """The normalised model and what was done to it, for report.json's `model.normalized`."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, int]
    steps: tuple[str, ...]
    tool: str
    opset: tuple[int, int]  # before, after
    nodes: tuple[int, int]  # before, after
    max_abs_diff: float

    def as_dict(self) -> dict:
        return {"tool": self.tool, "steps": list(self.steps), "opset": list(self.opset), "nodes": list(self.nodes),
                "inputs": {k: list(v) for k, v in self.shapes.items()},
                "check": {"max_abs_diff": self.max_abs_diff, "rtol": RTOL, "atol": ATOL, "runtime": "onnxruntime"}}


def _dims(value) -> list[int | str]:
    """A value's dimensions: an int where fixed, else the exporter's name for it ('?' if it has none)."""
    dims: list[int | str] = []
    for d in value.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?"))
    return dims


def real_inputs(proto) -> list:
    """Graph inputs that are fed at run time (old exporters list every initializer as an input too)."""
    weights = {i.name for i in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in weights]


def unknown_ops(proto) -> list[tuple[str, str, str]]:
    """(op, domain, why) of every node that neither ONNX's schemas (at the model's opset), ONNX Runtime's
    own domain nor a function in the model defines: no runtime here can run those."""
    import onnx

    local = {(f.domain, f.name) for f in proto.functions}
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    found: list[tuple[str, str, str]] = []
    for node in proto.graph.node:
        domain = node.domain or "ai.onnx"
        if (node.domain, node.op_type) in local or domain in RUNTIME_DOMAINS:
            continue
        schema_domain = "" if domain == "ai.onnx" else domain
        why = ""
        if not onnx.defs.has(node.op_type, schema_domain):
            why = "not an op of that domain"
        else:
            try:
                onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), schema_domain)
            except onnx.defs.SchemaError:
                why = f"not defined at the model's opset {opsets.get(domain, 1)}"
        if why and all((node.op_type, domain) != f[:2] for f in found):
            found.append((node.op_type, domain, why))
    return found


def static_shapes(proto, spec: str, asked: list[tuple[str | None, tuple[int, ...], str]]) -> dict[str, tuple[int, ...]]:
    """Each input's static shape: `--input-shape` where given (by name, else in order), a dynamic leading
    dimension taken as batch 1 (engines are built for batch 1), any other dynamic one an error naming it."""
    inputs = real_inputs(proto)
    by_name = {name: shape for name, shape, _ in asked if name}
    unnamed = [shape for name, shape, _ in asked if not name]
    unknown = sorted(set(by_name) - {v.name for v in inputs})
    if unknown:
        raise BadInput(f"--input-shape names {', '.join(unknown)}; model {spec} has inputs {', '.join(v.name for v in inputs)}")
    shapes, dynamic = {}, []
    for i, value in enumerate(inputs):
        dims = _dims(value)
        given = by_name.get(value.name) or (unnamed[i] if i < len(unnamed) else None)
        if given is not None:
            if dims and len(given) != len(dims):
                raise BadInput(f"--input-shape for '{value.name}' has {len(given)} dimensions; the model's input has "
                               f"{len(dims)} ({value.name}[{','.join(map(str, dims))}])")
            clash = [f"{value.name}[{k}] is {d}" for k, (d, g) in enumerate(zip(dims, given, strict=False))
                     if isinstance(d, int) and d != g]
            if clash:
                raise BadInput(f"--input-shape {','.join(map(str, given))} for '{value.name}' contradicts the model: {', '.join(clash)}")
            shapes[value.name] = tuple(given)
            continue
        fixed = [1 if k == 0 and not isinstance(d, int) else d for k, d in enumerate(dims)]
        dynamic += [f"{value.name}[{k}] ({d})" for k, d in enumerate(fixed) if not isinstance(d, int)]
        shapes[value.name] = tuple(d if isinstance(d, int) else 0 for d in fixed)
    if dynamic:
        example = " ".join(f"--input-shape {v.name}:{','.join(str(d) if isinstance(d, int) and k else ('1' if not k else f'D{k}') for k, d in enumerate(_dims(v)))}"
                           for v in inputs)
        raise BadInput(f"model {spec} has dynamic dimensions {', '.join(dynamic)}: fix them, e.g. {example}")
    return shapes


def _feed(proto, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded random input for the check: normal floats, zeros for integer inputs (ids, masks work with 0)."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    feed = {}
    for value in real_inputs(proto):
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = shapes[value.name]
        feed[value.name] = (rng.standard_normal(shape).astype(dtype) if np.dtype(dtype).kind == "f"
                            else np.zeros(shape, dtype))
    return feed


def _run(model: bytes | str, feed: dict[str, np.ndarray], what: str) -> list[np.ndarray]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        return [np.asarray(o) for o in session.run(None, feed)]
    except Exception as err:  # ONNX Runtime raises its own Fail/InvalidGraph/... for a model it cannot run
        raise BadInput(f"{what} does not run in ONNX Runtime ({runtime_message(err)})") from err


def _slim(proto, shapes: dict[str, tuple[int, ...]]):
    import onnxslim

    asked = [f"{name}:{','.join(map(str, shape))}" for name, shape in shapes.items()]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return onnxslim.slim(proto, input_shapes=asked or None)


def normalize(path: Path, spec: str, asked: list[tuple[str | None, tuple[int, ...], str]]) -> Normalized:
    """Normalise an ONNX file (cached by its content, the shapes asked and this module's version)."""
    import onnx
    import onnxslim

    path = Path(path)
    raw = path.read_bytes()
    try:
        proto = onnx.load(str(path))
    except Exception as err:  # DecodeError, OSError ... for a file that is not ONNX
        raise BadInput(f"{spec} is not a valid ONNX model ({runtime_message(err, 160)})") from err
    unknown = unknown_ops(proto)  # before the checker, which rejects them without saying the domain
    if unknown:
        named = ", ".join(f"'{op}' (domain '{domain}': {why})" for op, domain, why in unknown)
        raise BadInput(f"model {spec} uses op {named}, which no runtime here knows (ONNX Runtime, OpenVINO): "
                       "replace it, or export it as standard ONNX ops")
    try:
        onnx.checker.check_model(proto)
    except Exception as err:  # ValidationError ... for a malformed graph
        raise BadInput(f"{spec} is not a valid ONNX model ({runtime_message(err, 160)})") from err
    _check_finite(proto, spec)
    shapes = static_shapes(proto, spec, asked)
    key = sha256_bytes(raw + repr((sorted(shapes.items()), VERSION, onnxslim.__version__, onnx.__version__)).encode())
    out = cache_dir() / "normalized" / f"{key[:32]}.onnx"
    steps = _steps(proto, shapes)
    before_opset = _opset(proto)
    before_nodes = len(proto.graph.node)
    feed = _feed(proto, shapes)
    source = _run(str(path), feed, f"model {spec}")
    if not out.is_file():
        model = onnx.ModelProto()
        model.CopyFrom(proto)
        inputs = real_inputs(model)
        del model.graph.input[:]
        model.graph.input.extend(inputs)
        model.ir_version = max(model.ir_version, 4)  # IR 3 wanted every initializer listed as an input too
        try:
            model = _slim(model, shapes)
            if _opset(model) < MIN_OPSET:
                model = onnx.version_converter.convert_version(model, MIN_OPSET)
            model = onnx.shape_inference.infer_shapes(model, data_prop=True)
            onnx.checker.check_model(model)
        except BadInput:
            raise
        except Exception as err:  # a tool's failure on a valid model is ours to report, in one line
            raise Failure(f"cannot normalise {spec} with onnxslim {onnxslim.__version__} "
                          f"({type(err).__name__}: {runtime_message(err)})") from err
        atomic_write_bytes(out, model.SerializeToString())
    model = onnx.load(str(out))
    ours = _run(str(out), feed, f"the normalised {spec}")
    worst = compare_outputs(ours, source, f"the normalised {spec}")
    if _opset(model) != before_opset:
        steps.append(f"opset {before_opset} → {_opset(model)} (onnx.version_converter)")
    dtypes = {v.name: v.type.tensor_type.elem_type for v in real_inputs(model)}
    return Normalized(out, shapes, dtypes, tuple(steps), f"onnxslim {onnxslim.__version__}",
                      (before_opset, _opset(model)), (before_nodes, len(model.graph.node)), worst)


def _check_finite(proto, spec: str) -> None:
    from onnx import numpy_helper

    tensors = [(i.name, i) for i in proto.graph.initializer]
    tensors += [(n.output[0], a.t) for n in proto.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    for name, tensor in tensors:
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise BadInput(f"model {spec}: weight '{name}' holds NaN or Inf values")


def _steps(proto, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """What the normalisation changes in this model, said for people (report.json)."""
    steps = []
    constants = sum(n.op_type == "Constant" for n in proto.graph.node)
    if constants:
        steps.append(f"{constants} Constant nodes folded into initializers")
    listed = len(proto.graph.input) - len(real_inputs(proto))
    if listed:
        steps.append(f"{listed} initializers removed from the graph inputs")
    for value in real_inputs(proto):
        dims = _dims(value)
        if any(not isinstance(d, int) for d in dims):
            steps.append(f"{value.name}[{','.join(map(str, dims))}] fixed to [{','.join(map(str, shapes[value.name]))}]")
    steps.append("constants folded, shapes inferred, fusions (onnxslim)")
    return steps


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
