"""The reward feed shared by the Gram-based mixers (``gram_softmax`` and AC-ODM ``aligned``):
one step's reduced statistics into the unbiased Gram estimate
(:class:`~neox_acodm.rewards.GramEstimate`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..config_sections import RewardConfig
from ..masked_gram import MaskedGramEstimate
from ..rewards import GramEstimate
from .base import StepStats

__all__ = ["gram_estimate", "inclusion_of", "update_estimate"]


def gram_estimate(reward: RewardConfig, metric_weights: Sequence[float]) -> GramEstimate | MaskedGramEstimate:
    """The Gram estimate configured by ``reward`` (``reward.estimate``) over K = len(metric_weights)."""
    if reward.estimate == "masked":
        return MaskedGramEstimate(len(metric_weights), reward.ema, reward.self_term, list(metric_weights))
    return GramEstimate(len(metric_weights), reward.ema, reward.self_term, list(metric_weights), reward.clip)


def inclusion_of(stats: StepStats, n: int | None = None) -> np.ndarray:
    """[K] P(domain present) of the step: the plan's, else 1 - (1 - p)^n from i.i.d. draws."""
    if stats.inclusion is not None:
        return np.asarray(stats.inclusion, dtype=np.float64)
    n = int(np.sum(stats.counts)) if n is None else n
    return 1.0 - (1.0 - np.asarray(stats.probs, dtype=np.float64)) ** max(n, 1)


def update_estimate(est: GramEstimate | MaskedGramEstimate, stats: StepStats) -> torch.Tensor:
    """Feed one step into ``est``; returns rhat [K] float64."""
    if stats.gram is None:
        raise RuntimeError("this mixer needs the per-domain gradient Gram (stats.gram is None)")
    return est.update(
        torch.from_numpy(stats.gram),
        torch.as_tensor(stats.present),
        torch.as_tensor(inclusion_of(stats)),
        None if stats.lagged_gram is None else torch.from_numpy(stats.lagged_gram),
    )
