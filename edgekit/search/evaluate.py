"""How the search scores a candidate, cheaply: latency from the cost model, accuracy of the PyTorch
module on the validation split (the test split is never seen; calibration keeps its own split).

The layer table a latency prediction needs comes from a fast TorchScript export to memory (about
0.1 s for the benchmark models, against seconds for the checked torch.export one that builds the
engine): the table is the same (BatchNorm folded, same convolutions and shapes), only the node names
differ, so per-layer precisions, keyed by the original export's names, are matched by graph order.
Models the TorchScript tracer cannot run (Hugging Face `transformers` 5 models, whose forward
decorators break under it) take the torch.export-based exporter instead: about 1.5 s for a 4-layer BERT.
"""

from __future__ import annotations

import io
import tempfile
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgekit import graph
from edgekit.calibrate.qdq import QUANTIZABLE
from edgekit.data import Samples
from edgekit.errors import Failure, runtime_message
from edgekit.metrics import Metric
from edgekit.models import LoadedModel

BATCH = 64


_TABLES: OrderedDict[tuple, list[graph.Layer]] = OrderedDict()  # shape signature → layer table, newest last
_TABLES_KEPT = 64


def _signature(module, loaded: LoadedModel) -> tuple:
    """What a module's layer table depends on: its inputs' shapes, each submodule's class and plain
    settings (a head count, an epsilon, a stride) and each weight's shape, never the weights' values.
    Two candidates with one signature export the same graph (a walk prices the same cut again in its
    next step, and `bound_factor` reprices the module `predict` just priced)."""
    parts: list = [loaded.spec, tuple((s.name, tuple(s.shape)) for s in loaded.inputs)]
    for name, sub in module.named_modules():
        plain = tuple(sorted((k, v) for k, v in vars(sub).items() if not k.startswith("_") and _plain(v)))
        parts.append((name, type(sub).__qualname__, plain))
    parts.extend((name, tuple(t.shape), str(t.dtype)) for name, t in module.state_dict().items())
    return tuple(parts)


def _plain(value) -> bool:
    """A setting that can shape a graph and be compared: a number, a string, None, or a tuple of those."""
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, (bool, int, float, str, type(None)))


def fast_layer_table(module, loaded: LoadedModel) -> list[graph.Layer]:
    """The layer table of a (pruned) module via an in-memory TorchScript export, kept by the module's
    shape signature (edgekit.search.evaluate._signature): a repeated shape is not exported again."""
    key = _signature(module, loaded)
    if key in _TABLES:
        _TABLES.move_to_end(key)
        return list(_TABLES[key])
    layers = _export_layer_table(module, loaded)
    _TABLES[key] = layers
    while len(_TABLES) > _TABLES_KEPT:
        _TABLES.popitem(last=False)
    return list(layers)


def _export_layer_table(module, loaded: LoadedModel) -> list[graph.Layer]:
    import torch

    args = tuple(torch.from_numpy(loaded.example[s.name]) for s in loaded.inputs)
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.onnx"
        try:
            with graph._quiet():
                torch.onnx.export(module, args, buffer, input_names=[s.name for s in loaded.inputs],
                                  opset_version=17, dynamo=False)
            path.write_bytes(buffer.getvalue())
        except Exception as err:
            try:
                graph.export_onnx(replace(loaded, module=module, kind="torch"), path)
            except Failure:
                raise Failure(f"cannot export the candidate for its layer table: {runtime_message(err)}") from err
        return graph.layer_table(path)


def quantizable(layers: list[graph.Layer]) -> list[graph.Layer]:
    return [layer for layer in layers if layer.op in QUANTIZABLE]


def rename_by_order(reference: list[graph.Layer], layers: list[graph.Layer]) -> dict[str, str]:
    """Map each quantizable layer of `layers` to the reference table's name at the same place in the
    graph: the structure must be the same (pruning changes channels, never topology)."""
    ours, theirs = quantizable(layers), quantizable(reference)
    if [layer.op for layer in ours] != [layer.op for layer in theirs]:
        raise Failure("the candidate's layers do not line up with the model's (different structure): "
                      f"{len(ours)} vs {len(theirs)} quantizable layers")
    return {a.name: b.name for a, b in zip(ours, theirs, strict=True)}


def carry_names(reference: list[graph.Layer], layers: list[graph.Layer]) -> dict[str, str]:
    """Like rename_by_order, for a candidate whose graph changed (blocks dropped, layers factorized): a
    layer keeps the reference's name when the name is the same, else takes the name of the reference
    layer of its op whose module scope holds it (both halves of a factorized layer inherit the layer's).
    Layers with no counterpart are left out (they get the default precision). Needs scoped names
    (`/layers.0/ff/ff.2/MatMul`, as TorchScript exports them); the torch.export names carry none."""
    try:
        return rename_by_order(reference, layers)
    except Failure:
        pass
    theirs = quantizable(reference)
    by_name = {layer.name: layer for layer in theirs}
    out = {}
    for layer in quantizable(layers):
        if layer.name in by_name and by_name[layer.name].op == layer.op:
            out[layer.name] = layer.name
            continue
        scope = layer.name.rpartition("/")[0]
        holders = [t for t in theirs if t.op == layer.op and t.name.rpartition("/")[0]
                   and (scope + "/").startswith(t.name.rpartition("/")[0] + "/")]
        if holders:
            out[layer.name] = max(holders, key=lambda t: len(t.name)).name
    return out


def outputs(module, samples: Samples, loaded: LoadedModel) -> np.ndarray:
    """The module's first output on every sample, [N, ...], in batches."""
    import torch

    chunks = []
    with torch.no_grad():
        for start in range(0, len(samples), BATCH):
            args = [torch.from_numpy(np.ascontiguousarray(samples.inputs[s.name][start:start + BATCH])) for s in loaded.inputs]
            out = module(*args)
            out = out[0] if isinstance(out, (tuple, list)) else out
            chunks.append(out.detach().numpy())
    return np.concatenate(chunks)


def score(out: np.ndarray, samples: Samples, reference: np.ndarray, metric: Metric | None = None) -> float:
    """The task metric on the first output, in hundredths of a point (so that the search's floors,
    `max_accuracy_drop / 100` below the original, hold for any metric); without one, top-1 accuracy
    against the labels when there are labels, else top-1 agreement with the original model; cosine
    similarity for outputs that are not class scores."""
    if metric is not None:
        return metric([out], samples.labels, [reference]) * metric.points / 100
    flat, ref = out.reshape(len(out), -1), reference.reshape(len(reference), -1)
    if flat.shape[1] == 1:
        a, b = flat.ravel(), ref.ravel()
        return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    if samples.labels is not None:
        return float(np.mean(flat.argmax(1) == np.asarray(samples.labels).reshape(len(flat), -1)[:, 0]))
    return float(np.mean(flat.argmax(1) == ref.argmax(1)))
