"""ODM (Albalak et al., arXiv 2312.02406): an Exp3 bandit over domains, reward = training loss.

With K domains and t bandit updates since warm-up ended, eps_t = min(1/K, sqrt(ln K / (K t))).

* ``paper``:         R_i <- a R_i + (1-a) L_i / pi_i  (sampled domains; pi = the sampling
                     distribution that drew them);  pi = (1 - K eps_t) softmax(eps_{t-1} R) + eps_t
* ``exp3``:          the ODM repo's ``Exp3WeightUpdater``: R_i += L_i / pi_i (cumulative), same policy.
* ``smoothed_mean``: the repo's ``SmoothedMeanWeightUpdater``: R_i <- a R_i + (1-a) exp(L_i),
                     pi = (1 - K eps_t) R / sum R + eps_t.

``L_i`` is the domain's mean loss times ``reward_scale``.
"""

from __future__ import annotations

import math

import numpy as np

from ..config_sections import ODMConfig
from .base import Block, Mixer, StepStats


def exploration_eps(num_domains: int, t: int) -> float:
    """eps_t = min(1/K, sqrt(ln K / (K t))); 1/K for t <= 0."""
    if t <= 0 or num_domains < 2:
        return 1.0 / num_domains
    return min(1.0 / num_domains, math.sqrt(math.log(num_domains) / (num_domains * t)))


class ODMMixer(Mixer):
    @classmethod
    def inactive_warning(cls, block: Block, total_steps: int) -> str | None:
        if block.odm.warmup_steps >= total_steps:
            return (
                f"acodm.odm.warmup_steps={block.odm.warmup_steps} >= the run's {total_steps} steps: "
                f"ODM never moves the weights in this run"
            )
        return None

    def __init__(self, initial_weights: np.ndarray, cfg: ODMConfig):
        super().__init__(initial_weights)
        self.cfg = cfg
        k = self.initial.size
        self.reward = np.zeros(k, dtype=np.float64)
        self.t = 0
        self.eps = 1.0 / k

    def update(self, stats: StepStats) -> np.ndarray:
        cfg = self.cfg
        if stats.step + 1 < cfg.warmup_steps:
            return self.initial
        k = self.reward.size
        present = stats.present
        loss = np.where(present, stats.loss, 0.0) * cfg.reward_scale
        pi = np.asarray(stats.probs, dtype=np.float64)
        if cfg.variant == "paper":
            est = loss / np.maximum(pi, 1e-12)
            self.reward = np.where(present, cfg.smoothing * self.reward + (1 - cfg.smoothing) * est, self.reward)
        elif cfg.variant == "exp3":
            self.reward = self.reward + np.where(present, loss / np.maximum(pi, 1e-12), 0.0)
        else:  # smoothed_mean
            self.reward = np.where(
                present, cfg.smoothing * self.reward + (1 - cfg.smoothing) * np.exp(loss), self.reward
            )
        self.t += 1
        prev_eps, self.eps = self.eps, exploration_eps(k, self.t)
        if cfg.variant == "smoothed_mean":
            total = self.reward.sum()
            base = self.reward / total if total > 0 else np.full(k, 1.0 / k)
        else:
            z = prev_eps * self.reward
            z = np.exp(z - z.max())
            base = z / z.sum()
        weights = (1 - k * self.eps) * base + self.eps
        self.last_metrics = {"eps": self.eps}
        return weights / weights.sum()

    def state_dict(self) -> dict:
        return {"reward": self.reward.tolist(), "t": self.t, "eps": self.eps}

    def load_state_dict(self, state: dict) -> None:
        self.reward = np.asarray(state["reward"], dtype=np.float64)
        self.t = int(state["t"])
        self.eps = float(state["eps"])
