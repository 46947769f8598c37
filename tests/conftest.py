"""Shared fixtures: tiny models and configs. All tests run on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from neox_acodm.config import ACODMConfig, parse_config


class TinyBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.dense_h_to_4h = nn.Linear(d, 2 * d)
        self.mlp.dense_4h_to_h = nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.mlp.dense_4h_to_h(torch.relu(self.mlp.dense_h_to_4h(x)))


class TinyLM(nn.Module):
    """A 4-layer MLP 'language model' named like Hugging Face GPT-NeoX (layers.N.mlp.*)."""

    def __init__(self, vocab: int = 32, d: int = 16, layers: int = 4, seed: int = 0):
        super().__init__()
        g = torch.random.fork_rng()
        with g:
            torch.manual_seed(seed)
            self.emb = nn.Embedding(vocab, d)
            self.layers = nn.ModuleList(TinyBlock(d) for _ in range(layers))
            self.out = nn.Linear(d, vocab)

    def forward(self, tokens):
        x = self.emb(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.out(x)

    def loss(self, tokens):
        logits = self(tokens[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def tiny_cfg(mixer: str = "acodm", k: int = 3, **over) -> ACODMConfig:
    block = {
        "mixer": mixer,
        "seed": 7,
        "total_steps": 100,
        "domains": [{"name": f"d{i}", "weight": 1.0 + i} for i in range(k)],
        "agent": {
            "hidden_dim": 32,
            "num_layers": 2,
            "batch_size": 4,
            "buffer_size": 64,
            "warmup_steps": 3,
            "tau": 0.05,
        },
        "reward": {"params": {"module": "mlp_out", "layers": [-1, -2]}},
        "state": {"norm_params": {"module": "mlp_out", "layers": "all"}},
    }
    for key, val in over.items():
        if isinstance(val, dict) and isinstance(block.get(key), dict):
            block[key] = {**block[key], **val}
        else:
            block[key] = val
    return parse_config(block)


def domain_batch(domain: int, idx: np.ndarray, vocab: int = 32, seq: int = 9) -> torch.Tensor:
    """Deterministic synthetic tokens: domain d repeats pattern (i * (d+1)) mod vocab."""
    rows = []
    for i in idx:
        start = int(i) % vocab
        rows.append([(start + j * (domain + 1)) % vocab for j in range(seq)])
    return torch.tensor(rows, dtype=torch.long)


@pytest.fixture
def tiny_model():
    return TinyLM()


def train_steps(rt, model, opt, n: int) -> list[np.ndarray]:
    """Drive ``rt`` for ``n`` optimizer steps on synthetic domains; returns the weights after each."""
    out = []
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        for g, (d, idx) in enumerate(rt.micro_batches()):
            rt.begin_microbatch(g, grad_scale=float(rt.grad_accum))
            loss = model.loss(domain_batch(d, idx)) / rt.grad_accum
            loss.backward()
            rt.record_loss(d, loss * rt.grad_accum)
        opt.step()
        rt.end_step()
        out.append(rt.weights.copy())
    return out
