"""Two benchmark models for int8 post-training quantization: a small ResNet and a small MobileNetV2.

The demo CNN is too small for quantization to matter, and real ImageNet models need downloads. These
two keep the demo's trade (real data shipped inside scikit-learn, no download, deterministic seeded
training, cached weights, the demo's train/held-out split) but run on the digits upsampled to 32x32,
so they have enough compute, and the two block kinds that matter for int8: plain residual convs, and
depthwise inverted residuals, whose weight ranges differ widely between channels (hard on per-tensor int8).

At 32x32 the MobileNetV2-like runs in about 0.3 ms on a desktop CPU, and half of that is the runtime's
per-layer cost, not compute: pruning every channel to a quarter and dropping every droppable block only
halves its time (OpenVINO on a 2-core AMD EPYC, timed interleaved). `mobilenet96` is the same network as edge image
classifiers run it (Edge Impulse's default transfer-learning model is a MobileNetV2 at 96x96): a stride-2 stem,
trained on the digits upsampled to 96x96, where the layers' compute is what the time goes to.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edgekit.demo import _digits, _split_indices, held_out, trained
from edgekit.util import cache_dir, sha256_bytes

RESOLUTION = 32
SEED = 0


class _Recipe(NamedTuple):
    """Everything that decides the trained weights; its repr is hashed into the cache file name."""

    name: str
    arch: str
    epochs: int
    lr: float
    weight_decay: float = 1e-4
    batch: int = 64
    seed: int = SEED
    data: str = f"digits-v1 bilinear {RESOLUTION}x{RESOLUTION}, demo split, no augmentation, adamw cosine, channels_last"


RESNET = _Recipe(
    "resnet",
    "c32-bn-relu, basic(32,s1) basic(64,s2) basic(128,s2), gap, fc10",
    epochs=6,
    lr=3e-3,
)
MOBILENET = _Recipe(
    "mobilenet",
    "c16-bn-relu6, ir(16,s1,t1) ir(24,s2,t6) ir(24,s1,t6) ir(32,s2,t6) ir(32,s1,t6) ir(64,s1,t6), c256, gap, fc10",
    epochs=6,
    lr=5e-3,
)
EDGE_RESOLUTION = 96
MOBILENET96 = _Recipe(
    "mobilenet96",
    "c16(s2)-bn-relu6, ir(16,s1,t1) ir(24,s2,t6) ir(24,s1,t6) ir(32,s2,t6) ir(32,s1,t6) ir(64,s1,t6), c256, gap, fc10",
    epochs=6,
    lr=5e-3,
    data=f"digits-v1 bilinear {EDGE_RESOLUTION}x{EDGE_RESOLUTION}, demo split, no augmentation, adamw cosine, channels_last",
)


def _upsample(x: np.ndarray, size: int = RESOLUTION) -> np.ndarray:
    """N,1,8,8 digits → N,1,size,size float32, bilinear."""
    import torch

    with torch.no_grad():
        up = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                                             size=(size, size), mode="bilinear", align_corners=False)
    return up.numpy()


def make_resnet():
    import torch.nn as nn

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        Basic(32, 32, 1),
        Basic(32, 64, 2),
        Basic(64, 128, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


def make_mobilenet(stem_stride: int = 1):
    import torch.nn as nn

    def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> list:
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + [nn.ReLU6()] if act else layers

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            layers = conv_bn(cin, hidden, 1) if expand != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden)  # depthwise
            layers += conv_bn(hidden, cout, 1, act=False)  # linear projection
            self.block = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            out = self.block(x)
            return x + out if self.residual else out

    return nn.Sequential(
        *conv_bn(1, 16, 3, stem_stride),
        InvertedResidual(16, 16, 1, 1),
        InvertedResidual(16, 24, 2, 6),
        InvertedResidual(24, 24, 1, 6),
        InvertedResidual(24, 32, 2, 6),
        InvertedResidual(32, 32, 1, 6),
        InvertedResidual(32, 64, 1, 6),
        *conv_bn(64, 256, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, 10),
    )


def _train(model, recipe: _Recipe, resolution: int) -> None:
    import torch

    x, y = _digits()
    train, _ = _split_indices(len(x))
    xs, ys = torch.from_numpy(_upsample(x[train], resolution)), torch.from_numpy(y[train])
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * ((len(xs) + recipe.batch - 1) // recipe.batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.to(memory_format=torch.channels_last)  # ~1.5x faster convs on CPU; weights are the same maths
    model.train()
    for _ in range(recipe.epochs):
        for idx in torch.randperm(len(xs), generator=generator).split(recipe.batch):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx])
            loss.backward()
            optimizer.step()
            schedule.step()
    model.to(memory_format=torch.contiguous_format)
    model.eval()


def _build(make, recipe: _Recipe, resolution: int = RESOLUTION):
    import torch

    torch.manual_seed(recipe.seed)
    model = make()
    key = sha256_bytes(f"{recipe!r} torch={torch.__version__}".encode())[:16]
    trained(model, lambda m: _train(m, recipe, resolution), cache_dir() / "zoo" / f"{recipe.name}-{key}.pt")
    return model, torch.zeros(1, 1, resolution, resolution)


def resnet():
    """The trained small ResNet and an example input (a model factory, `edgekit.zoo:resnet`)."""
    return _build(make_resnet, RESNET)


def mobilenet():
    """The trained small MobileNetV2 and an example input (a model factory, `edgekit.zoo:mobilenet`)."""
    return _build(make_mobilenet, MOBILENET)


def data() -> tuple[np.ndarray, np.ndarray]:
    """The zoo's data factory: held-out digits (never trained on) upsampled to 32x32, and their labels."""
    x, y = held_out()
    return _upsample(x), y


def mobilenet96():
    """The MobileNetV2-like at an edge classifier's size (`edgekit.zoo:mobilenet96`): a stride-2 stem, trained
    on the digits at 96x96; its data factory is `edgekit.zoo:data96`."""
    return _build(lambda: make_mobilenet(stem_stride=2), MOBILENET96, EDGE_RESOLUTION)


def data96() -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits upsampled to 96x96, and their labels (for `mobilenet96`)."""
    x, y = held_out()
    return _upsample(x, EDGE_RESOLUTION), y


# ---- the same networks at a realistic input size, for latency work ----------------------------------------
LATENCY_RESOLUTION = 224  # what edge image models run at; a 32x32 model measures the runtime's overhead


def _at_224(factory):
    import torch

    model, _ = factory()
    return model, torch.zeros(1, 1, LATENCY_RESOLUTION, LATENCY_RESOLUTION)


def resnet224():
    """The trained small ResNet fed 224x224 (`edgekit.zoo:resnet224`): fully convolutional, so the same
    weights run at any size. Trained at 32x32: use it for latency, not for accuracy."""
    return _at_224(resnet)


def mobilenet224():
    """The trained small MobileNetV2 fed 224x224 (`edgekit.zoo:mobilenet224`); for latency, as resnet224."""
    return _at_224(mobilenet)


def data224(n: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The first n held-out digits upsampled to 224x224 (calibration data for the 224 models; their
    accuracy means little, the weights were trained at 32x32)."""
    import torch

    x, y = held_out()
    with torch.no_grad():
        up = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(x[:n], dtype=np.float32)),
                                             size=(LATENCY_RESOLUTION, LATENCY_RESOLUTION), mode="bilinear",
                                             align_corners=False)
    return up.numpy(), y[:n]
