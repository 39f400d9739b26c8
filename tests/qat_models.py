"""The digits MLP with two outlier channels (tests/test_qat.py) as a model spec and data for a search."""

from __future__ import annotations

import numpy as np

# 64× cost post-training int8 about 1 point of test accuracy (7 of 597 samples) and none on the
# search's validation split: too little for QAT's gain to stand out of its run-to-run spread. 256×: 5 points.
OUTLIER = 256.0


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16).astype(np.float32), d.target


def outlier_mlp():
    """Trained on digits (2 s), then channels 0 and 1 of the first layer scaled up OUTLIER× and read OUTLIER× smaller
    by the next: the same float function, a hard case for per-tensor int8."""
    import torch
    from torch import nn

    x, y = _digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    inputs, labels = torch.from_numpy(x[:1200]), torch.from_numpy(y[:1200])
    for _ in range(300):
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for channel in (0, 1):
            model[0].weight[channel] *= OUTLIER
            model[0].bias[channel] *= OUTLIER
            model[2].weight[:, channel] /= OUTLIER
    return model.eval(), {"x": torch.zeros(1, 64)}


def digits_data() -> dict[str, np.ndarray]:
    x, y = _digits()
    return {"x": x, "label": y}
