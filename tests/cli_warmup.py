"""One small export in the CLI fork server (tests/cli_process.py imports this in PRELOAD), so that its
forked children find the torch.export-based ONNX exporter ready.

A process's first `torch.onnx.export` imports the exporter and fills its lazy tables: about 3 s here,
paid again by every forked `edgekit` call that exports a PyTorch model (most of the suite's). What the
warm-up leaves behind is the exporter's code and tables, not state of any model: it runs on one thread
(no OpenMP pool exists at the fork) and stops the progress-bar monitor thread it starts.
"""

from __future__ import annotations


def _warm_up_the_exporter() -> None:
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch
    import tqdm

    from edgekit import graph
    from edgekit.models import InputSpec, LoadedModel

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    model = LoadedModel("warm-up", "torch", (InputSpec("x", (1, 3, 8, 8), "float32"),),
                        {"x": np.zeros((1, 3, 8, 8), np.float32)}, "0" * 64, module=net)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="edgekit-warm-") as tmp:
            graph.export_onnx(model, Path(tmp) / "warm.onnx")  # what every CLI call's export goes through
    finally:
        torch.set_num_threads(threads)
        monitor = getattr(tqdm.tqdm, "monitor", None)
        if monitor is not None:  # a thread the children would not have: stop it here
            monitor.exit()
            tqdm.tqdm.monitor = None


try:
    _warm_up_the_exporter()
except Exception:  # noqa: BLE001 - a warm-up only: the children export as they would have without it
    pass
