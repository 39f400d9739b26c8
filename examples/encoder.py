"""A tiny transformer encoder with two integer inputs (token ids, attention mask).

It shows edgekit with several inputs and integer inputs, and the additive attention mask
(-1e4 where masked) that calibration must survive. Weights are random: use it for latency and
for agreement with PyTorch, not for accuracy; they are drawn as BERT and timm draw a transformer's
before training (normal, std 0.02). The attention is written as timm writes it (one fused
`qkv` projection, the head count in `num_heads`, reshapes by head size), so the search prunes it in
whole heads; `build_base` is a realistic size for benchmarks (6 layers, hidden 384, sequence 64).

    edgekit deploy --target host --model examples.encoder:build --data examples.encoder:data

At the default size a run takes 0.14 ms, mostly per-op overhead: a search cannot halve it (measured,
`--speedup 2 --metric cosine`: 0.60× at best, with a layer dropped). At `build_base` it does (measured on a
2-core AMD EPYC: 0.49× in 1411 s with heads, FFN widths, two layers dropped and low-rank layers; README):

    edgekit search --target host --speedup 2 --metric cosine --model examples.encoder:build_base \
        --data examples.encoder:data_base --time-limit 1500

The search's tests use it at hidden 256 and sequence 64 (tests/transformer_models.py).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

VOCAB, SEQ, DIM, HEADS, CLASSES = 256, 32, 64, 4, 4


class EncoderLayer(nn.Module):
    def __init__(self, dim: int = DIM, heads: int = HEADS) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / self.head_dim ** 0.5 + additive_mask
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        x = self.norm1(x + self.proj(attended))
        return self.norm2(x + self.ff(x))


class TinyEncoder(nn.Module):
    def __init__(self, layers: int = 2, dim: int = DIM, heads: int = HEADS, seq: int = SEQ) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.02)
        self.layers = nn.ModuleList([EncoderLayer(dim, heads) for _ in range(layers)])
        self.head = nn.Linear(dim, CLASSES)
        for module in self.modules():  # as BERT and timm's ViT start training: normal(0, 0.02), zero biases
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + self.pos
        mask = attention_mask[:, None, None, :].to(x.dtype)
        additive = (1.0 - mask) * -1e4
        for layer in self.layers:
            x = layer(x, additive)
        pooled = (x * mask[:, 0, 0, :, None]).sum(1) / mask[:, 0, 0, :, None].sum(1)
        return self.head(pooled)


BASE = dict(layers=6, dim=384, heads=6, seq=64)  # a realistic small sentence encoder


def build(layers: int = 2, dim: int = DIM, heads: int = HEADS, seq: int = SEQ):
    torch.manual_seed(0)
    model = TinyEncoder(layers, dim, heads, seq).eval()
    ids = torch.ones(1, seq, dtype=torch.int64)
    mask = torch.ones(1, seq, dtype=torch.int64)
    return model, {"input_ids": ids, "attention_mask": mask}


def build_base():
    return build(**BASE)


def data(n: int = 400, seq: int = SEQ) -> dict[str, np.ndarray]:
    """Random token sequences of random lengths, padded with 0 and masked."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, (n, seq), dtype=np.int64)
    lengths = rng.integers(4, seq + 1, n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


def data_base(n: int = 400) -> dict[str, np.ndarray]:
    return data(n, BASE["seq"])
