"""A tiny transformer encoder with two integer inputs (token ids, attention mask).

It shows edgekit with several inputs and integer inputs, and the additive attention mask
(-1e4 where masked) that calibration must survive. Weights are random: use it for latency and
for agreement with PyTorch, not for accuracy.

    edgekit deploy --target host --model examples.encoder:build --data examples.encoder:data
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

VOCAB, SEQ, DIM, HEADS, CLASSES = 256, 32, 64, 4, 4


class EncoderLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.norm1 = nn.LayerNorm(DIM)
        self.norm2 = nn.LayerNorm(DIM)
        self.ff = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM))

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / (DIM // HEADS) ** 0.5 + additive_mask
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, DIM)
        x = self.norm1(x + self.proj(attended))
        return self.norm2(x + self.ff(x))


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(torch.randn(1, SEQ, DIM) * 0.02)
        self.layers = nn.ModuleList([EncoderLayer() for _ in range(2)])
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + self.pos
        mask = attention_mask[:, None, None, :].to(x.dtype)
        additive = (1.0 - mask) * -1e4
        for layer in self.layers:
            x = layer(x, additive)
        pooled = (x * mask[:, 0, 0, :, None]).sum(1) / mask[:, 0, 0, :, None].sum(1)
        return self.head(pooled)


def build():
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    ids = torch.ones(1, SEQ, dtype=torch.int64)
    mask = torch.ones(1, SEQ, dtype=torch.int64)
    return model, {"input_ids": ids, "attention_mask": mask}


def data(n: int = 400) -> dict[str, np.ndarray]:
    """Random token sequences of random lengths, padded with 0 and masked."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, (n, SEQ), dtype=np.int64)
    lengths = rng.integers(4, SEQ + 1, n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}
