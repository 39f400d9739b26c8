"""A model built so that dropping a block and factorizing a layer win over channel pruning, for the
search's test of those moves: its second residual block adds almost nothing (weights scaled by 1e-3),
and its wide layer (WIDTH → 4·WIDTH, a third of the work) has a weight of rank 16, so both moves are
nearly free while they remove most of the work; pruning channels of either costs accuracy. The wide
layer is wide so that each rung of its rank ladder saves far more than a layer's overhead costs, whatever
the machine's load when the cost model is calibrated."""

from __future__ import annotations

import numpy as np

TOKENS, FEATURES, WIDTH = 32, 64, 512  # 32 tokens: the moves win the same at half the work per sample (64 took twice as long)


def _net():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(WIDTH, 2 * WIDTH), nn.Linear(2 * WIDTH, WIDTH)
            with torch.no_grad():
                self.fc2.weight.mul_(scale)
                self.fc2.bias.mul_(scale)

        def forward(self, x):
            return x + self.fc2(torch.relu(self.fc1(x)))

    class Redundant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(FEATURES, WIDTH)
            self.blocks = nn.ModuleList([Block(1.0), Block(1e-3)])
            self.wide = nn.Linear(WIDTH, 4 * WIDTH)
            with torch.no_grad():
                low = torch.randn(4 * WIDTH, 16) @ torch.randn(16, WIDTH) / WIDTH ** 0.5
                self.wide.weight.copy_(low / low.std() * self.wide.weight.std())
            self.head = nn.Linear(4 * WIDTH, 10)

        def forward(self, x):
            x = torch.relu(self.inp(x))
            for block in self.blocks:
                x = block(x)
            return self.head(torch.relu(self.wide(x)))

    return Redundant


def redundant():
    import torch

    torch.manual_seed(0)
    model = _net()().eval()
    return model, {"x": torch.zeros(1, TOKENS, FEATURES)}


def redundant_data(n: int = 200) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((n, TOKENS, FEATURES)).astype(np.float32)}
