"""From the per-domain gradient Gram matrix to AC-ODM rewards (pure tensor functions).

``gram[i, j] = <g_i, g_j>`` where ``g_i`` is domain i's mean gradient over the selected
tensors in this step (zero row for a domain that drew no micro-batch).
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def alignment(gram: torch.Tensor) -> torch.Tensor:
    """W_i = sum_{j != i} gram[i, j] (off-diagonal row sums). gram: [K, K] -> [K]."""
    return gram.sum(dim=1) - gram.diagonal()


def zscore(x: torch.Tensor, clamp: float = 3.0) -> torch.Tensor:
    """(x - mean) / (unbiased std + 1e-8), clamped to +-clamp; zeros for a single entry."""
    if x.numel() < 2:
        return torch.zeros_like(x)
    return ((x - x.mean()) / (x.std(unbiased=True) + 1e-8)).clamp(-clamp, clamp)


def paper_alignment(gram: torch.Tensor, present: torch.Tensor, clip: float) -> torch.Tensor:
    """Scale-free alignment W_i / mean_{j present} ||g_j||^2, clipped to [-clip, clip].

    Dividing by the mean *squared* norm makes the value independent of the loss scale and of
    1/grad_accum (the reference code divides by the mean norm, so its clip depended on the fp16
    loss scale, defect D9). gram: [K, K]; present: [K] bool -> [K] float32 (0 where absent).
    """
    gram = gram.to(torch.float32)
    w = alignment(gram)
    sq = gram.diagonal()[present]
    scale = sq.mean() if sq.numel() else torch.tensor(0.0)
    w = w / (scale + _EPS)
    return torch.where(present, w.clamp(-clip, clip), torch.zeros_like(w))


def reference_reward(gram: torch.Tensor, clip: float) -> torch.Tensor:
    """The reference code's vector reward: z(clip(W / (mean ||g|| + 1e-6))). [K, K] -> [K]."""
    gram = gram.to(torch.float32)
    w = alignment(gram)
    norms = gram.diagonal().clamp_min(0).sqrt()
    return zscore((w / (norms.mean() + 1e-6)).clamp(-clip, clip))


class RewardEMA:
    """The paper's importance-corrected EMA: r_i <- xi r_i + (1 - xi) W_i / p_i (present i only)."""

    def __init__(self, num_domains: int, xi: float, importance_correction: bool, clip: float):
        self.xi = xi
        self.importance_correction = importance_correction
        self.clip = clip
        self.value = torch.zeros(num_domains, dtype=torch.float32)
        self.initialized = torch.zeros(num_domains, dtype=torch.bool)

    def update(self, w: torch.Tensor, probs: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """w, probs: [K] float; present: [K] bool. Returns the new estimate [K]."""
        x = w.to(torch.float32)
        if self.importance_correction:
            x = x / probs.to(torch.float32).clamp_min(1e-6)
        x = x.clamp(-self.clip, self.clip)
        first = present & ~self.initialized
        blended = self.xi * self.value + (1 - self.xi) * x
        new = torch.where(first, x, torch.where(present, blended, self.value))
        self.value = new
        self.initialized = self.initialized | present
        return new.clone()

    def state_dict(self) -> dict:
        return {"value": self.value.clone(), "initialized": self.initialized.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"].clone().to(torch.float32)
        self.initialized = state["initialized"].clone().to(torch.bool)
