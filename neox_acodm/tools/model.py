"""The one model builder of the tools wing: Pythia-shaped (GPT-NeoX architecture) Hugging Face
models for ``bench-mix``/the demo and for ``bench-reward``'s step timing."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PYTHIA", "ModelSpec", "pythia_shape"]

#: Pythia shapes: name -> (layers, hidden)
PYTHIA = {"160m": (12, 768), "410m": (24, 1024), "1b": (16, 2048), "1.4b": (24, 2048)}


def pythia_shape(name: str) -> tuple[int, int]:
    """(layers, hidden) of a Pythia size name, or of ``LAYERSxHIDDEN``."""
    if name in PYTHIA:
        return PYTHIA[name]
    try:
        layers, hidden = (int(x) for x in name.split("x"))
    except ValueError:
        raise ValueError(f"{name!r} is not one of {list(PYTHIA)} or LAYERSxHIDDEN") from None
    return layers, hidden


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a Pythia-style (GPT-NeoX) model: 4x MLP, rotary on 25 % of the head
    dimensions, parallel residual, no dropout, untied embeddings."""

    layers: int
    hidden: int
    heads: int
    vocab: int
    seq_len: int

    def build(self, seed: int) -> torch.nn.Module:
        """The model with weights drawn from ``seed`` (CPU generator only; CUDA's is untouched)."""
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        cfg = GPTNeoXConfig(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            intermediate_size=4 * self.hidden,
            max_position_embeddings=self.seq_len,
            rotary_pct=0.25,
            use_parallel_residual=True,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            tie_word_embeddings=False,
            initializer_range=0.02,
            bos_token_id=1,
            eos_token_id=1,
        )
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return GPTNeoXForCausalLM(cfg)
