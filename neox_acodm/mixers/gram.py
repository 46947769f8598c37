"""The same-signal closed form: domain weights straight from the captured Gram, no RL.

R&B (Ge et al., arXiv 2505.00358) reweights domains online from the Gram matrix of domain
gradients; no code is public, so this is our closed form on *the same estimate AC-ODM's
``aligned`` reward uses* (:class:`~neox_acodm.rewards.GramEstimate`)::

    rhat = Ghat c                    (first-order decrease of the metric loss per domain)
    w    = prior * exp(eta * z(rhat)) / Z,   z = (rhat - mean) / std across domains

It is also the optimum of max_a a . z(rhat) - KL(a || prior) / eta, i.e. what AC-ODM's
``decomposed`` actor objective converges to without a critic: the baseline any RL gain must beat.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config_sections import GramMixerConfig
from ..rewards import GramEstimate, zscore
from .base import Block, Mixer, Requirements, StepStats
from .feed import update_estimate


def gibbs(prior: np.ndarray, rhat: torch.Tensor, eta: float) -> np.ndarray:
    """prior * exp(eta z(rhat)), normalised. prior, rhat: [K] -> [K] float64."""
    z = zscore(rhat.to(torch.float64), clamp=3.0).numpy()
    logits = np.log(np.maximum(prior, 1e-12)) + eta * z
    w = np.exp(logits - logits.max())
    return w / w.sum()


class GramSoftmaxMixer(Mixer):
    """``estimate``: the shared Gram estimate (:func:`~neox_acodm.mixers.feed.gram_estimate`)."""

    @classmethod
    def requirements(cls, block: Block) -> Requirements:
        return Requirements(gram=True, lagged_gram=block.reward.self_term == "lagged")

    def __init__(self, initial_weights: np.ndarray, estimate: GramEstimate, gram: GramMixerConfig):
        super().__init__(initial_weights)
        self.gram = gram
        self.estimate = estimate

    def update(self, stats: StepStats) -> np.ndarray:
        rhat = update_estimate(self.estimate, stats)
        self.last_reward = rhat.numpy().copy()
        if stats.step + 1 < self.gram.warmup_steps:
            return self.initial
        return gibbs(self.initial, rhat, self.gram.eta)

    def state_dict(self) -> dict:
        return {"estimate": self.estimate.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.estimate.load_state_dict(state["estimate"])
