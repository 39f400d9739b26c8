"""torch.onnx's exporter builds its table of ONNX functions (every ATen op's torchlib translation) anew
on every export: about 0.5 s, a third of a 2-layer BERT's export, paid by every search prediction that
goes through torch.export. The table depends only on the opset, and an export only reads it, so it is
built once per opset here and each export gets its own copy (an export given a custom translation table
adds to the copy, never to the cached one). The output is the same ONNX; only the time changes.

Applied once, by edgekit.graph before its first torch.export-based export. It patches one classmethod of
torch.onnx's internals (torch is pinned in pyproject.toml); where that method is not found, as in another
torch version, nothing is patched and exports build their table as before."""

from __future__ import annotations

import threading

_LOCK = threading.Lock()
_applied = False


def build_once() -> None:
    """Make `ONNXRegistry.from_torchlib` build the table once per opset and return copies of it."""
    global _applied
    with _LOCK:
        if _applied:
            return
        _applied = True
        try:
            from torch.onnx._internal.exporter import _registration
        except ImportError:  # another torch: leave its exporter as it is
            return
        registry_class = getattr(_registration, "ONNXRegistry", None)
        original = getattr(registry_class, "from_torchlib", None)
        if original is None or getattr(original, "_edgekit_once", False):
            return
        built: dict[tuple, object] = {}

        def from_torchlib(cls, *args, **kwargs):
            key = (cls, args, tuple(sorted(kwargs.items())))
            with _LOCK:
                if key not in built:
                    built[key] = original.__func__(cls, *args, **kwargs)
                return _copy(built[key])

        from_torchlib._edgekit_once = True
        registry_class.from_torchlib = classmethod(from_torchlib)


def _copy(registry):
    """A registry whose function lists are its own (register_op appends to them); the entries are shared."""
    copy = type(registry).__new__(type(registry))
    copy.__dict__.update(registry.__dict__)
    copy.functions = {name: list(entries) for name, entries in registry.functions.items()}
    return copy
