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

    import torch
    import tqdm

    from edgekit import graph, onnx_registry

    onnx_registry.build_once()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="edgekit-warm-") as tmp, graph._quiet():
            torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(Path(tmp) / "warm.onnx"),
                              opset_version=graph.OPSET, dynamo=True, external_data=False)
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
