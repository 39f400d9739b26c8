"""The built-in demo: a small CNN trained on scikit-learn's handwritten digits (8x8, 10 classes).

The digits ship inside scikit-learn's wheel, so the demo needs no download. The model trains on a
fixed, seeded part of the set in a few seconds, deterministically, and is cached in the user cache
folder; the rest of the set (never seen in training) is the demo's calibration/validation/test data.
"""

from __future__ import annotations

import io

import numpy as np

from edgekit.util import atomic_write_bytes, cache_dir, sha256_bytes

RECIPE = "digits-cnn-v1: c16-c32-pool-c64-c64-gap-fc10, bn, adamw lr=3e-3 cosine, 24 epochs, bs=64, seed=0"
TRAIN_FRACTION = 0.55
SEED = 0


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # N, 1, 8, 8 in [0, 1]
    return x, digits.target.astype(np.int64)


def _split_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(SEED).permutation(n)
    cut = int(round(TRAIN_FRACTION * n))
    return np.sort(order[:cut]), np.sort(order[cut:])


def held_out() -> tuple[np.ndarray, np.ndarray]:
    """Digits the demo model never trained on: the demo's data for calibration, validation and test."""
    x, y = _digits()
    _, rest = _split_indices(len(x))
    return x[rest], y[rest]


def make_model():
    import torch.nn as nn

    def block(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 16),
        *block(16, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        *block(64, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def _train(model) -> None:
    import torch

    x, y = _digits()
    train, _ = _split_indices(len(x))
    xs, ys = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    generator = torch.Generator().manual_seed(SEED)
    epochs, batch = 24, 64
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(xs) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xs), generator=generator).split(batch):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx])
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def trained(model, train, path) -> None:
    """Load `model`'s weights from `path`, or train it single-threaded (the same weights on every
    machine) and save them there atomically. Shared by the demo and the zoo."""
    import torch

    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(model)
    finally:
        torch.set_num_threads(threads)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(path, buffer.getvalue())  # a unique temp file: processes training at once do not collide


def build():
    """The trained demo model and an example input (a model factory like any user's)."""
    import torch

    torch.manual_seed(SEED)
    model = make_model()
    key = sha256_bytes(f"{RECIPE} torch={torch.__version__}".encode())[:16]
    trained(model, _train, cache_dir() / "demo" / f"digits-cnn-{key}.pt")
    return model, torch.zeros(1, 1, 8, 8)


def data() -> tuple[np.ndarray, np.ndarray]:
    """The demo's data factory: held-out digits and their labels."""
    return held_out()
