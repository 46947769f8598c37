"""AC-ODM: a DDPG actor picks the next step's domain weights from the training state.

Per step t (after the LM optimizer step, on the owning rank)::

    s_{t+1} = state(losses, counts, norms, progress [, z(rhat)])
    r_t     = paper:     sum_i a_t,i * rhat_i,  rhat = EMA_xi( W~_i / p_i )  (scalar)
              reference: z(clip(W_i / mean|g|))                              (vector [K])
              aligned:   sum_i a_t,i * z(rhat)_i, rhat = Ghat c (GramEstimate, unbiased)
    replay  <- (s_t, a_t, r_t, s_{t+1});  agent.update() x updates_per_step
    a_{t+1} = warm-up behaviour (prior + noise, or ODM)   while t + 1 < warmup_steps
              mu(s_{t+1}) + N(0, exploration_std)          afterwards
              mu(s_{t+1})                                  proxy target (frozen, no reward)
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..agent import DDPGAgent
from ..agent.config import AgentConfig
from ..checkpoint import atomic_save
from ..checkpoint import load as load_state_file
from ..config_sections import ODMConfig, ProxyConfig, RewardConfig, StateConfig
from ..rewards import RewardEMA, paper_alignment, reference_reward, zscore
from ..state import StateBuilder, state_dim
from .base import Block, Mixer, Requirements, StepStats
from .feed import gram_estimate, update_estimate
from .odm import ODMMixer

logger = logging.getLogger(__name__)


class ACODMMixer(Mixer):
    """``metric_weights``: [K] the domains' metric weights (the ``aligned`` reward's c);
    ``num_norm_layers``: L, the norm-feature layers of the state; ``seed``: the block's seed."""

    learns_policy = True

    @classmethod
    def requirements(cls, block: Block) -> Requirements:
        if block.proxy.role == "target":  # a frozen policy: no reward, no gradient capture
            return Requirements(norms=True)
        lagged = block.reward.mode == "aligned" and block.reward.self_term == "lagged"
        return Requirements(gram=True, lagged_gram=lagged, norms=True)

    @classmethod
    def inactive_warning(cls, block: Block, total_steps: int) -> str | None:
        if block.proxy.role != "target" and block.agent.warmup_steps >= total_steps:
            return (
                f"acodm.agent.warmup_steps={block.agent.warmup_steps} >= the run's {total_steps} "
                f"steps: the actor never chooses the weights in this run"
            )
        return None

    def __init__(
        self,
        initial_weights: np.ndarray,
        *,
        agent: AgentConfig,
        reward: RewardConfig,
        state: StateConfig,
        proxy: ProxyConfig,
        odm: ODMConfig,
        metric_weights,
        seed: int,
        num_norm_layers: int,
        total_steps: int,
        device: torch.device | str = "cpu",
    ):
        super().__init__(initial_weights)
        self.agent_cfg, self.reward_cfg, self.state_cfg, self.proxy = agent, reward, state, proxy
        k = self.initial.size
        self.target = proxy.role == "target"
        self.vector = reward.mode == "reference"
        self.aligned = reward.mode == "aligned"
        extra = k if state.include_reward else 0
        self.state = StateBuilder(k, num_norm_layers, total_steps, state.normalize, extra)
        self.agent = DDPGAgent(
            agent,
            state_dim(k, num_norm_layers, extra),
            k,
            reward_dim=k if self.vector else 1,
            total_updates=max(1, total_steps * agent.updates_per_step),
            seed=seed,
            device=device,
            prior=torch.as_tensor(self.initial, dtype=torch.float32),
        )
        self.reward_ema = RewardEMA(k, reward.ema, reward.importance_correction, reward.clip)
        self.gram_est = gram_estimate(reward, metric_weights) if self.aligned else None
        # the known reward coefficient [K] at the current state (decomposed objective / state)
        self.coef = torch.zeros(k, dtype=torch.float32)
        self.prev_coef: torch.Tensor | None = None
        self.warmup_odm = ODMMixer(initial_weights, odm) if agent.warmup_policy == "odm" else None
        self.noise = torch.Generator().manual_seed(seed + 2)
        self.prev_state: torch.Tensor | None = None
        self.last_reward = None if self.target else np.zeros(k)
        if self.target:
            path = proxy.policy_path
            try:
                policy = load_state_file(path)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"acodm.proxy.policy_path: {path} does not exist; run the source run (proxy.role: source) first"
                ) from None
            self.agent.load_policy(policy, freeze=True)
            logger.info("AC-ODM proxy target: loaded frozen policy from %s", path)

    # ---------------------------------------------------------------------------------------
    def _reward(self, stats: StepStats) -> torch.Tensor:
        present = torch.as_tensor(stats.present)
        if self.vector:
            r = reference_reward(torch.from_numpy(stats.gram), self.reward_cfg.clip, present)
            self.last_reward = r.numpy().astype(np.float64)
            return r
        if self.aligned:
            rhat = update_estimate(self.gram_est, stats)
            self.coef = zscore(rhat.float())
        else:
            w = paper_alignment(torch.from_numpy(stats.gram), present, self.reward_cfg.clip)
            rhat = self.reward_ema.update(w, torch.as_tensor(stats.probs), present)
            self.coef = rhat.float()
        self.last_reward = rhat.numpy().astype(np.float64)
        a = torch.as_tensor(stats.weights, dtype=torch.float32)
        return (a * self.coef).sum().reshape(1)

    def _noisy(self, base: np.ndarray, std: float) -> np.ndarray:
        if std <= 0:
            return base
        noise = torch.randn(base.size, generator=self.noise, dtype=torch.float64).numpy()
        if self.agent_cfg.noise_space == "log":
            w = np.maximum(base, 1e-12) * np.exp(std * noise)
            return w / w.sum()
        w = np.clip(base + std * noise, 0.0, None)
        return w if w.sum() > 0 else base

    def skip(self, stats: StepStats) -> None:
        """A skipped step breaks the (s, a, r, s') chain: the next step starts a new one."""
        self.prev_state = None

    def update(self, stats: StepStats) -> np.ndarray:
        cfg = self.agent_cfg
        norms = torch.zeros(self.state.l) if stats.norms is None else torch.from_numpy(stats.norms)
        upd = torch.zeros(self.state.l) if stats.update_norms is None else torch.from_numpy(stats.update_norms)
        metrics: dict[str, float] = {}
        reward = None
        if not self.target:
            if stats.gram is None:
                raise RuntimeError("AC-ODM needs the per-domain gradient Gram (stats.gram is None)")
            reward = self._reward(stats)
            metrics["reward"] = float(reward.mean())
        s_next = self.state.build(
            stats.step + 1,
            torch.as_tensor(stats.loss),
            torch.as_tensor(stats.counts),
            norms,
            upd,
            extra=self.coef if self.state_cfg.include_reward else None,
        )
        if reward is not None:
            if self.prev_state is not None:
                self.agent.observe(
                    self.prev_state,
                    torch.as_tensor(stats.weights, dtype=torch.float32),
                    reward,
                    s_next,
                    self.prev_coef,
                    self.coef,
                )
            if len(self.agent.replay) >= cfg.batch_size:
                for _ in range(cfg.updates_per_step):
                    out = self.agent.update()
                    if out:
                        metrics.update(out)
            if self.warmup_odm is not None:
                behaviour = self.warmup_odm.update(stats)
        self.prev_state = s_next
        self.prev_coef = self.coef.clone()
        in_warmup = not self.target and stats.step + 1 < cfg.warmup_steps
        if in_warmup:
            if self.warmup_odm is not None:
                weights = behaviour
            else:
                weights = self._noisy(self.initial, cfg.warmup_noise_std)
        else:
            policy = self.agent.act(s_next).numpy().astype(np.float64)
            weights = policy if self.target else self._noisy(policy, cfg.exploration_std)
        metrics["warmup"] = float(in_warmup)
        self.last_metrics = metrics
        return weights

    # ---------------------------------------------------------------------------------------
    def export_policy(self, path: str) -> None:
        """Write the actor for a proxy target run (atomic)."""
        atomic_save(self.agent.policy_state_dict(), path)

    def state_dict(self) -> dict:
        return {
            "agent": self.agent.state_dict(),
            "state": self.state.state_dict(),
            "reward_ema": self.reward_ema.state_dict(),
            "warmup_odm": self.warmup_odm.state_dict() if self.warmup_odm else None,
            "noise": self.noise.get_state(),
            "prev_state": self.prev_state,
            "last_reward": None if self.last_reward is None else self.last_reward.tolist(),
            "gram_est": self.gram_est.state_dict() if self.gram_est is not None else None,
            "coef": self.coef.clone(),
            "prev_coef": self.prev_coef,
        }

    def load_state_dict(self, state: dict) -> None:
        self.agent.load_state_dict(state["agent"])
        self.state.load_state_dict(state["state"])
        self.reward_ema.load_state_dict(state["reward_ema"])
        if self.warmup_odm is not None:
            self.warmup_odm.load_state_dict(state["warmup_odm"])
        self.noise.set_state(state["noise"])
        self.prev_state = state["prev_state"]
        self.last_reward = None if state["last_reward"] is None else np.asarray(state["last_reward"])
        if self.gram_est is not None:
            self.gram_est.load_state_dict(state["gram_est"])
        self.coef, self.prev_coef = state["coef"].clone(), state["prev_coef"]
