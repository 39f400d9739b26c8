"""Transformer models built the way users build them, for the search's tests: a Hugging Face
`transformers` BertModel from a config (random weights: nothing is downloaded), and its data."""

from __future__ import annotations

import numpy as np

VOCAB, SEQ = 1000, 64
BERT_SEQ = 128  # long enough that its latency is mostly compute: pruning heads and FFN widths can halve it


def bert(layers: int = 2, seq: int = BERT_SEQ):
    """A small BERT encoder (2 layers, hidden 256, 4 heads, FFN 1024), eager attention; the output is
    the last hidden state (no pooler), so the metric compares embeddings."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=VOCAB, hidden_size=256, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=seq, attn_implementation="eager")
    torch.manual_seed(0)
    model = BertModel(config, add_pooling_layer=False).eval()
    model.config.return_dict = False
    ids = torch.ones(1, seq, dtype=torch.int64)
    return model, {"input_ids": ids, "attention_mask": torch.ones(1, seq, dtype=torch.int64)}


def bert_data(n: int = 300, seq: int = BERT_SEQ) -> dict[str, np.ndarray]:
    """Random token sequences of random lengths, padded with 0 and masked."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, (n, seq), dtype=np.int64)
    lengths = rng.integers(8, seq + 1, n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


def bert_1layer():
    """The same BERT with one layer over sequences of SEQ (64): the suite's search walks its heads and FFN
    width on a predicted budget, where the model's size only sets how long each candidate's export and
    fine-tune take (the 2-layer one at 128 takes 4 to 5 minutes on 2 loaded cores; this one under 1)."""
    return bert(layers=1, seq=SEQ)


def bert_1layer_data(n: int = 300) -> dict[str, np.ndarray]:
    return bert_data(n, SEQ)


def encoder():
    """examples/encoder.py at a size whose latency is compute, not per-op overhead (2 layers, hidden 256,
    4 heads, sequence 64): pruning can halve it."""
    from examples.encoder import build

    return build(layers=2, dim=256, heads=4, seq=SEQ)


def encoder_data(n: int = 300) -> dict[str, np.ndarray]:
    from examples.encoder import data

    return data(n, SEQ)


def albert(seq: int = SEQ):
    """A small ALBERT (2 layers sharing one set of weights, hidden 128, 4 heads), eager attention: its export
    reads every shared weight and bias from one initializer, as tied weights are."""
    import torch
    from transformers import AlbertConfig, AlbertModel

    config = AlbertConfig(vocab_size=VOCAB, embedding_size=64, hidden_size=128, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=512, max_position_embeddings=seq,
                          attn_implementation="eager")
    torch.manual_seed(0)
    model = AlbertModel(config, add_pooling_layer=False).eval()
    model.config.return_dict = False
    ids = torch.ones(1, seq, dtype=torch.int64)
    return model, {"input_ids": ids, "attention_mask": torch.ones(1, seq, dtype=torch.int64)}


def albert_data(n: int = 200) -> dict[str, np.ndarray]:
    return bert_data(n, SEQ)
