"""Cumulative mirror descent on the first-order reward (exponentiated gradient, as in DoGE,
arXiv 2310.15393, and Aioli, arXiv 2411.05735), on the same Gram estimate as ``gram_softmax``
and AC-ODM ``aligned`` (``reward.estimate: masked`` recommended)::

    rhat   = Ghat c                                   [K] first-order value of a unit step per domain
    adv    = rhat - w . rhat                          advantage over the current mix
    rms2  <- rho rms2 + (1 - rho) mean(adv^2)         running scale of the (raw) advantage
    adv   <- sign(adv) max(|adv| - se, 0)             ignore what is below its standard error
    log w <- max(log w + (kappa / T) adv / rms, log floor)

It starts at the initial weights (``initial_weights: prior`` = the best mix that needs no
sweep). Its fixed point is equal marginal value across domains (``adv = 0``). Step-size rule,
set before any run: a persistent advantage of one RMS moves ``log w`` by ``kappa`` over the T
steps of the run, pure noise by about ``kappa / sqrt(T)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..typed_yaml import ConfigError, field
from .base import Mixer, Requirements, StepStats
from .feed import update_estimate

__all__ = ["MirrorConfig", "MirrorMixer"]


@dataclass(frozen=True)
class MirrorConfig:
    """``acodm.mirror``: the mirror-descent closed form (mixer ``mirror``)."""

    kappa: float = field(
        2.0,
        doc="Step-size rule: a persistent one-RMS advantage moves log w by kappa over the run.",
        rng=(0.0, None, False, None),
    )
    warmup_steps: int = field(
        0, doc="Steps at the initial weights (the estimate still updates).", rng=(0, None, True, None)
    )
    rms_ema: float = field(0.99, doc="EMA factor of the advantage's mean square.", rng=(0.0, 1.0, True, False))
    threshold: bool = field(True, doc="Ignore advantages below the reward estimate's standard error.")


class MirrorMixer(Mixer):
    """``estimate``: a :class:`~neox_acodm.masked_gram.MaskedGramEstimate` (needs ``spread()``)."""

    @classmethod
    def requirements(cls, block) -> Requirements:
        return Requirements(gram=True, lagged_gram=block.reward.self_term == "lagged")

    @classmethod
    def check_block(cls, block, path: str) -> None:
        if block.reward.estimate != "masked":
            raise ConfigError(
                f"{path}.reward.estimate: mixer 'mirror' needs 'masked' (its standard errors), got "
                f"{block.reward.estimate!r}; set it or use `preset: mirror`"
            )

    def __init__(self, initial_weights: np.ndarray, estimate, mirror: MirrorConfig, total_steps: int, floor: float):
        super().__init__(initial_weights)
        self.cfg, self.estimate = mirror, estimate
        self.rate = mirror.kappa / max(1, total_steps)
        self.log_floor = math.log(max(floor, 1e-12))
        self.logw = np.log(np.maximum(self.initial / self.initial.sum(), 1e-12))
        self.rms2 = 0.0
        self.last_reward = np.zeros(self.initial.size)

    def _weights(self) -> np.ndarray:
        w = np.exp(self.logw - self.logw.max())
        return w / w.sum()

    def update(self, stats: StepStats) -> np.ndarray:
        rhat = update_estimate(self.estimate, stats).numpy()
        self.last_reward = rhat.copy()
        if stats.step + 1 < self.cfg.warmup_steps:
            return self._weights()
        w = self._weights()
        seen = np.isfinite(self.estimate.spread().numpy())
        adv = np.where(seen, rhat - float(w @ rhat), 0.0)
        m2 = float(np.mean(adv**2))  # the scale of the raw advantage (signal and noise)
        self.rms2 = m2 if self.rms2 == 0.0 else self.cfg.rms_ema * self.rms2 + (1 - self.cfg.rms_ema) * m2
        if self.cfg.threshold:
            se = np.where(seen, self.estimate.spread().numpy(), 0.0)
            adv = np.sign(adv) * np.maximum(np.abs(adv) - se, 0.0)
        if self.rms2 > 0:
            self.logw = np.maximum(self.logw + self.rate * adv / math.sqrt(self.rms2), self.log_floor)
        self.last_metrics = {"mirror_rms": math.sqrt(self.rms2), "mirror_active": float(np.count_nonzero(adv))}
        return self._weights()

    def state_dict(self) -> dict:
        return {"estimate": self.estimate.state_dict(), "logw": self.logw.tolist(), "rms2": self.rms2}

    def load_state_dict(self, state: dict) -> None:
        self.estimate.load_state_dict(state["estimate"])
        logw = np.asarray(state["logw"], dtype=np.float64)
        if logw.shape != self.logw.shape:
            raise ValueError(f"mirror state has {logw.shape} weights, this run has {self.logw.shape}")
        self.logw, self.rms2 = logw, float(state["rms2"])
