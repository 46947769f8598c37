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

from ..config import ACODMConfig
from ..rewards import GramEstimate, zscore
from .base import Mixer, StepStats


def gram_estimate(cfg: ACODMConfig) -> GramEstimate:
    """The ``aligned`` Gram estimate configured by ``cfg.reward`` and the metric weights."""
    return GramEstimate(cfg.num_domains, cfg.reward.ema, cfg.reward.self_term,
                        [d.metric_weight for d in cfg.domains], cfg.reward.clip)


def inclusion_of(stats: StepStats, n: int | None = None) -> np.ndarray:
    """[K] P(domain present) of the step: the plan's, else 1 - (1 - p)^n from i.i.d. draws."""
    if stats.inclusion is not None:
        return np.asarray(stats.inclusion, dtype=np.float64)
    n = int(np.sum(stats.counts)) if n is None else n
    return 1.0 - (1.0 - np.asarray(stats.probs, dtype=np.float64)) ** max(n, 1)


def update_estimate(est: GramEstimate, stats: StepStats) -> torch.Tensor:
    """Feed one step into ``est``; returns rhat [K] float64."""
    if stats.gram is None:
        raise RuntimeError("this mixer needs the per-domain gradient Gram (stats.gram is None)")
    return est.update(torch.from_numpy(stats.gram), torch.as_tensor(stats.present),
                      torch.as_tensor(inclusion_of(stats)),
                      None if stats.lagged_gram is None else torch.from_numpy(stats.lagged_gram))


def gibbs(prior: np.ndarray, rhat: torch.Tensor, eta: float) -> np.ndarray:
    """prior * exp(eta z(rhat)), normalised. prior, rhat: [K] -> [K] float64."""
    z = zscore(rhat.to(torch.float64), clamp=3.0).numpy()
    logits = np.log(np.maximum(prior, 1e-12)) + eta * z
    w = np.exp(logits - logits.max())
    return w / w.sum()


class GramSoftmaxMixer(Mixer):
    needs_gram = True

    def __init__(self, initial_weights: np.ndarray, cfg: ACODMConfig):
        super().__init__(initial_weights)
        self.cfg = cfg
        self.estimate = gram_estimate(cfg)

    def update(self, stats: StepStats) -> np.ndarray:
        rhat = update_estimate(self.estimate, stats)
        self.last_reward = rhat.numpy().copy()
        if stats.step + 1 < self.cfg.gram.warmup_steps:
            return self.initial
        return gibbs(self.initial, rhat, self.cfg.gram.eta)

    def state_dict(self) -> dict:
        return {"estimate": self.estimate.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.estimate.load_state_dict(state["estimate"])
