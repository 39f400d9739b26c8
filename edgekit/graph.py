"""ONNX export (checked numerically against the source model) and the layer table.

The layer table is the one description of a model every later step reads: per ONNX node its op,
shapes, MACs, parameters and bytes moved. It is computed from ONNX shape inference, so an ONNX
model handed in directly gets the same table as an exported PyTorch one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import BadInput, Failure, runtime_message
from edgekit.models import LoadedModel

OPSET = 18
# fp32 export check: |onnx - torch| <= ATOL + RTOL * |torch|, elementwise.
RTOL, ATOL = 1e-3, 1e-4
DTYPE_BYTES = {1: 4, 10: 2, 11: 8, 6: 4, 7: 8, 9: 1, 2: 1, 3: 1, 16: 2}


@dataclass(frozen=True)
class ExportCheck:
    samples: int
    max_abs_diff: float
    rtol: float = RTOL
    atol: float = ATOL


@dataclass(frozen=True)
class Layer:
    name: str
    op: str
    input_shapes: tuple[tuple[int, ...], ...]
    output_shape: tuple[int, ...]
    macs: int
    params: int
    bytes_moved: int


def reference_outputs(model: LoadedModel, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The source model's outputs for one feed: PyTorch for torch models, ONNX Runtime for ONNX ones."""
    if model.kind == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
        return [np.asarray(o) for o in session.run(None, feed)]
    import torch

    args = [torch.from_numpy(np.ascontiguousarray(feed[s.name])) for s in model.inputs]
    with torch.no_grad():
        out = model.module(*args)
    flat = out if isinstance(out, (tuple, list)) else [out]
    return [o.detach().numpy() for o in flat]


@contextlib.contextmanager
def _quiet():
    """torch.onnx prints progress and warnings; keep the user's terminal for edgekit's own output."""
    level = logging.getLogger("torch").level
    logging.getLogger("torch").setLevel(logging.ERROR)
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

    args = tuple(torch.from_numpy(model.example[s.name]) for s in model.inputs)
    names = [s.name for s in model.inputs]
    errors = []
    for dynamo in (True, False):  # the torch.export-based exporter first; TorchScript modules need the old one
        tmp = out_path.with_suffix(".tmp.onnx")
        try:
            with _quiet():
                torch.onnx.export(model.module, args, str(tmp), input_names=names, opset_version=OPSET,
                                  dynamo=dynamo, external_data=False)
            tmp.replace(out_path)
            return out_path
        except Exception as err:  # each exporter fails in its own way; keep both reasons
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(err).__name__}: {runtime_message(err)}")
        finally:
            tmp.unlink(missing_ok=True)
    raise Failure(f"cannot export {model.spec} to ONNX ({'; '.join(errors)})")


def check_export(model: LoadedModel, onnx_path: Path, feeds: list[dict[str, np.ndarray]]) -> ExportCheck:
    """Run the ONNX file in ONNX Runtime and compare with the source model on the given feeds."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst, within = 0.0, True
    for feed in feeds:
        ours = session.run(None, feed)
        ref = reference_outputs(model, feed)
        if len(ours) != len(ref):
            raise Failure(f"ONNX export has {len(ours)} outputs, the source model {len(ref)}")
        for a, b in zip(ours, ref, strict=True):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            if a.shape != b.shape:
                raise Failure(f"ONNX export output shape {a.shape} differs from the source model's {b.shape}")
            diff = np.abs(a - b)
            worst = max(worst, float(diff.max(initial=0.0)))
            within &= bool(np.all(diff <= ATOL + RTOL * np.abs(b)))
    if not within:
        raise Failure(f"ONNX export differs from the source model: max |diff| {worst:.3g} (rtol {RTOL}, atol {ATOL})")
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

    layers = []
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        ins = [n for n in node.input if n]
        out = shapes.get(node.output[0], ()) if node.output else ()
        params = sum(int(np.prod(shapes.get(n, ()), dtype=np.int64)) for n in ins if n in weights)
        moved = sum(nbytes(n) for n in ins) + sum(nbytes(n) for n in node.output if n)
        layers.append(Layer(
            name=node.name or node.output[0],
            op=node.op_type,
            input_shapes=tuple(shapes.get(n, ()) for n in ins if n not in weights),
            output_shape=out,
            macs=_macs(node, [shapes.get(n, ()) for n in ins], out),
            params=params,
            bytes_moved=moved,
        ))
    return layers


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
