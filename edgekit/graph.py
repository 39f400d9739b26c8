"""ONNX export (checked numerically against the source model) and the layer table.

The layer table is the one description of a model every later step reads: per ONNX node its op,
shapes, MACs, parameters and bytes moved. It is computed from ONNX shape inference, so an ONNX
model handed in directly gets the same table as an exported PyTorch one.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekit import onnx_registry
from edgekit.errors import BadInput, Failure, runtime_message
from edgekit.models import LoadedModel
from edgekit.output_check import ATOL, RTOL, compare_outputs

OPSET = 18
DTYPE_BYTES = {1: 4, 10: 2, 11: 8, 6: 4, 7: 8, 9: 1, 2: 1, 3: 1, 16: 2}
DTYPE_NAMES = {1: "f32", 10: "f16", 11: "f64", 6: "i32", 7: "i64", 9: "bool", 2: "u8", 3: "i8", 16: "bf16"}


@dataclass(frozen=True)
class ExportCheck:
    samples: int
    max_abs_diff: float
    rtol: float = RTOL
    atol: float = ATOL


SMALL_CONST = 64  # integer constants up to this many values are kept (shapes, axes), and scalars (clip bounds)
INT_DTYPES = (6, 7, 2, 3, 9)
# Attribute defaults that change nothing, filled in so that written and implied attributes key alike.
SPATIAL_OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool")


@dataclass(frozen=True)
class Const:
    """A constant input of a layer (a weight, a bias, a shape, clip bounds): its position among the
    node's inputs, shape and ONNX element type, and its values when small, so that the layer can be
    rebuilt alone (edgekit.microbench) with random weights of the right shapes. dtype 0: an omitted
    optional input."""

    index: int
    shape: tuple[int, ...]
    dtype: int
    values: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Layer:
    name: str
    op: str
    input_shapes: tuple[tuple[int, ...], ...]
    output_shape: tuple[int, ...]
    macs: int
    params: int
    bytes_moved: int
    # What latency depends on beyond the shapes, and the graph's wiring (tensor names), so that the
    # cost model can key a layer's configuration, rebuild it alone and see which layers fuse.
    inputs: tuple[str, ...] = ()  # activation inputs, as input_shapes
    outputs: tuple[str, ...] = ()
    input_dtypes: tuple[int, ...] = ()  # ONNX element types of `inputs`
    output_shapes: tuple[tuple[int, ...], ...] = ()  # every output (output_shape is the first)
    constants: tuple[Const, ...] = ()
    attrs: tuple[tuple[str, object], ...] = ()  # ONNX attributes, defaults of spatial ops filled in
    opset: int = OPSET  # the model's ONNX opset (an op's inputs and attributes depend on it)

    def attr(self, name: str, default=None):
        return next((v for k, v in self.attrs if k == name), default)

    @property
    def weight_shape(self) -> tuple[int, ...] | None:
        """The weight's shape for Conv/ConvTranspose/Gemm/MatMul with a constant second input."""
        return next((c.shape for c in self.constants if c.index == 1), None)

    def key(self, precision: str = "fp32") -> str:
        """The layer's configuration as a stable string: op, shapes, constants (values when small),
        attributes and precision. Two layers with the same key run the same kernel at the same cost."""
        def dims(shape) -> str:
            return "x".join(map(str, shape)) or "scalar"

        parts = [self.op, "in=" + ",".join(dims(s) for s in self.input_shapes),
                 "out=" + ",".join(dims(s) for s in (self.output_shapes or (self.output_shape,)))]
        for c in self.constants:
            if c.dtype == 0:
                parts.append(f"c{c.index}=none")
            else:
                # integer values (shapes, axes) change the work; float scalars (clip bounds) do not
                shown = c.values is not None and c.dtype in INT_DTYPES
                values = "=" + ",".join(f"{v:g}" for v in c.values) if shown else ""
                parts.append(f"c{c.index}={dims(c.shape)}:{DTYPE_NAMES.get(c.dtype, c.dtype)}{values}")
        for name, value in self.attrs:
            text = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
            parts.append(f"{name}={text}")
        if self.input_dtypes and any(d != 1 for d in self.input_dtypes):
            parts.append("dtypes=" + ",".join(DTYPE_NAMES.get(d, str(d)) for d in self.input_dtypes))
        return " ".join(parts) + f" @{precision}"


def reference_outputs(model: LoadedModel, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The source model's outputs for one feed: PyTorch for torch models, ONNX Runtime for ONNX ones."""
    if model.kind == "onnx":
        path = Path(model.source_path or model.onnx_path)
        session = _session(str(path), path.stat().st_mtime_ns)
        return [np.asarray(o) for o in session.run(None, feed)]
    import torch

    args = [torch.from_numpy(np.ascontiguousarray(feed[s.name])) for s in model.inputs]
    with torch.no_grad():
        out = model.module(*args)
    flat = out if isinstance(out, (tuple, list)) else [out]
    return [o.detach().numpy() for o in flat]


@functools.lru_cache(maxsize=4)
def _session(path: str, mtime_ns: int):
    """One ONNX Runtime session per source file (and version of it): the reference runs once per sample."""
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _quiet():
    """torch.onnx prints progress and warnings; keep the user's terminal for edgekit's own output."""
    level = logging.getLogger("torch").level
    logging.getLogger("torch").setLevel(logging.CRITICAL)  # a failed export is reported by its exception
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.getLogger("torch").setLevel(level)


def export_onnx(model: LoadedModel, out_path: Path) -> Path:
    """Write the model as ONNX (batch 1, static shapes: what an embedded engine runs)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if model.kind == "onnx":
        shutil.copyfile(model.onnx_path, out_path)
        return out_path
    import torch

    onnx_registry.build_once()  # torch.export-based exports share one table of ONNX functions (about 0.5 s each)
    args = tuple(torch.from_numpy(model.example[s.name]) for s in model.inputs)
    names = [s.name for s in model.inputs]
    errors = []
    for dynamo in (True, False):  # the torch.export-based exporter first; TorchScript modules need the old one
        tmp = out_path.with_suffix(".tmp.onnx")
        try:
            with _quiet():
                torch.onnx.export(model.module, args, str(tmp), input_names=names, opset_version=OPSET,
                                  dynamo=dynamo, external_data=False)
            fold_weight_transposes(tmp)
            tmp.replace(out_path)
            return out_path
        except Exception as err:  # each exporter fails in its own way; keep both reasons
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(err).__name__}: {runtime_message(err)}")
        finally:
            tmp.unlink(missing_ok=True)
    raise Failure(f"cannot export {model.spec} to ONNX ({'; '.join(errors)})")


def fold_weight_transposes(path: Path) -> None:
    """Store each weight the graph transposes at run time transposed, as an initializer. torch.onnx leaves
    `MatMul(x, Transpose(W))` where a Linear's weight is shared (ALBERT's layers, tied embeddings): to
    calibration that MatMul reads two activations, and it stayed float. Each (weight, permutation) is stored
    once, so a shared weight stays shared (onnxslim, which normalize.py runs on foreign files, folds them too
    but stores a copy per use, ALBERT 1.3 → 1.9 MB, and rewrites the rest of the graph the search names by)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    folds = [n for n in graph.node if n.op_type == "Transpose" and len(n.input) == 1 and n.input[0] in inits]
    if not folds:
        return
    stored: dict[tuple, str] = {}
    renamed: dict[str, str] = {}
    for node in folds:
        perm = tuple(next((list(a.ints) for a in node.attribute if a.name == "perm"), ()))
        key = (node.input[0], perm)
        if key not in stored:
            array = numpy_helper.to_array(inits[node.input[0]])
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(np.transpose(array, perm or None)),
                                                             node.output[0]))
            stored[key] = node.output[0]
        else:
            renamed[node.output[0]] = stored[key]
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    nested = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute)
    unread = set() if nested else {n.input[0] for n in folds} - read  # the originals only the Transposes read
    kept = [i for i in graph.initializer if i.name not in unread]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(proto, str(path))


def check_export(model: LoadedModel, onnx_path: Path, feeds: list[dict[str, np.ndarray]]) -> ExportCheck:
    """Run the ONNX file in ONNX Runtime and compare with the source model on the given feeds."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for feed in feeds:
        worst = max(worst, compare_outputs(session.run(None, feed), reference_outputs(model, feed), "ONNX export"))
    return ExportCheck(len(feeds), worst)


def _shape(value) -> tuple[int, ...]:
    return tuple(d.dim_value for d in value.type.tensor_type.shape.dim)


def layer_table(onnx_path: Path) -> list[Layer]:
    """Per ONNX node: op, shapes, MACs, parameters and bytes moved (activations in and out, weights)."""
    import onnx
    from onnx import shape_inference

    try:
        proto = shape_inference.infer_shapes(onnx.load(str(onnx_path)), data_prop=True)
    except Exception as err:
        raise BadInput(f"{onnx_path}: ONNX shape inference failed ({runtime_message(err)})") from err
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    shapes, dtypes = {}, {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        shapes[value.name] = _shape(value)
        dtypes[value.name] = value.type.tensor_type.elem_type
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
        dtypes[init.name] = init.data_type
    weights = {i.name for i in graph.initializer}
    weights |= {n.output[0] for n in graph.node if n.op_type == "Constant"}

    def nbytes(name: str) -> int:
        return int(np.prod(shapes.get(name, ()), dtype=np.int64)) * DTYPE_BYTES.get(dtypes.get(name, 1), 4)

    values = {i.name: i for i in graph.initializer}
    values |= {n.output[0]: next((a.t for a in n.attribute if a.name == "value"), None)
               for n in graph.node if n.op_type == "Constant"}

    layers = []
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        ins = [n for n in node.input if n]
        acts = [n for n in ins if n not in weights]
        out = shapes.get(node.output[0], ()) if node.output else ()
        params = sum(int(np.prod(shapes.get(n, ()), dtype=np.int64)) for n in ins if n in weights)
        moved = sum(nbytes(n) for n in ins) + sum(nbytes(n) for n in node.output if n)
        layers.append(Layer(
            name=node.name or node.output[0],
            op=node.op_type,
            input_shapes=tuple(shapes.get(n, ()) for n in acts),
            output_shape=out,
            macs=_macs(node, [shapes.get(n, ()) for n in ins], out),
            params=params,
            bytes_moved=moved,
            inputs=tuple(acts),
            outputs=tuple(n for n in node.output if n),
            input_dtypes=tuple(dtypes.get(n, 1) for n in acts),
            output_shapes=tuple(shapes.get(n, ()) for n in node.output if n),
            constants=_constants(node, weights, shapes, dtypes, values),
            attrs=_attributes(node, shapes),
            opset=opset,
        ))
    return layers


def _constants(node, weights: set[str], shapes: dict, dtypes: dict, values: dict) -> tuple[Const, ...]:
    from onnx import numpy_helper

    found = []
    for i, name in enumerate(node.input):
        if not name:
            found.append(Const(i, (), 0))
        elif name in weights:
            shape = shapes.get(name, ())
            small = None
            tensor, size = values.get(name), int(np.prod(shape, dtype=np.int64))
            if tensor is not None and (size <= 1 or (dtypes.get(name, 1) in INT_DTYPES and size <= SMALL_CONST)):
                small = tuple(float(v) for v in np.asarray(numpy_helper.to_array(tensor)).ravel())
            found.append(Const(i, tuple(shape), dtypes.get(name, 1), small))
    while found and found[-1].dtype == 0:  # trailing omitted inputs are no inputs at all
        found.pop()
    return tuple(found)


def _attributes(node, shapes: dict) -> tuple[tuple[str, object], ...]:
    """Plain attributes (numbers, strings, lists of them), with the spatial ops' defaults filled in."""
    from onnx import AttributeProto, helper

    plain = (AttributeProto.INT, AttributeProto.FLOAT, AttributeProto.STRING, AttributeProto.INTS,
             AttributeProto.FLOATS, AttributeProto.STRINGS)
    attrs: dict[str, object] = {}
    for a in node.attribute:
        if a.type in plain:
            value = helper.get_attribute_value(a)
            value = value.decode() if isinstance(value, bytes) else value
            attrs[a.name] = tuple(v.decode() if isinstance(v, bytes) else v for v in value) if isinstance(value, list) else value
    if node.op_type in SPATIAL_OPS:
        if "kernel_shape" not in attrs and len(node.input) > 1:
            attrs["kernel_shape"] = tuple(shapes.get(node.input[1], (0, 0, 0, 0))[2:])
        rank = len(attrs.get("kernel_shape", ()))
        attrs.setdefault("strides", (1,) * rank)
        if node.op_type in ("Conv", "ConvTranspose", "MaxPool"):
            attrs.setdefault("dilations", (1,) * rank)
        if attrs.get("auto_pad", "NOTSET") == "NOTSET":
            attrs.pop("auto_pad", None)
            attrs.setdefault("pads", (0,) * 2 * rank)
        if node.op_type.startswith("Conv"):
            attrs.setdefault("group", 1)
    return tuple(sorted(attrs.items()))


def _macs(node, in_shapes: list[tuple[int, ...]], out: tuple[int, ...]) -> int:
    """Multiply-accumulates of the compute-heavy ops; element-wise ops count as 0 (they are bytes-bound)."""
    out_elems = int(np.prod(out, dtype=np.int64)) if out else 0
    if node.op_type == "Conv" and len(in_shapes) > 1 and len(in_shapes[1]) >= 3:
        w = in_shapes[1]  # Cout, Cin/groups, kH, kW
        return out_elems * int(np.prod(w[1:], dtype=np.int64))
    if node.op_type == "ConvTranspose" and len(in_shapes) > 1 and in_shapes[0]:
        w = in_shapes[1]  # Cin, Cout/groups, kH, kW
        return int(np.prod(in_shapes[0], dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if node.op_type in ("MatMul", "Gemm") and in_shapes and in_shapes[0]:
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        k = in_shapes[0][-2] if trans_a and len(in_shapes[0]) >= 2 else in_shapes[0][-1]
        return out_elems * int(k)
    return 0


def table_as_dicts(layers: list[Layer]) -> list[dict]:
    return [asdict(layer) for layer in layers]


def totals(layers: list[Layer]) -> dict[str, int]:
    return {
        "layers": len(layers),
        "macs": sum(layer.macs for layer in layers),
        "params": sum(layer.params for layer in layers),
        "bytes_moved": sum(layer.bytes_moved for layer in layers),
    }
