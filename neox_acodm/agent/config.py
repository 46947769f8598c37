"""``acodm.agent``: the typed config section of the DDPG actor-critic (owned by the agent)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..typed_yaml import ConfigError, field

__all__ = ["AgentConfig"]


@dataclass(frozen=True)
class AgentConfig:
    """DDPG actor-critic."""

    hidden_dim: int = field(1024, doc="Width of actor and critic MLPs.", rng=(1, None, True, None))
    num_layers: int = field(5, doc="Linear-LayerNorm-ReLU blocks per net.", rng=(1, None, True, None))
    gamma: float = field(0.95, doc="Discount.", rng=(0.0, 1.0, True, False))
    tau: float = field(0.001, doc="Soft target update rate.", rng=(0.0, 1.0, False, True))
    actor_lr: float = field(1e-4, doc="Peak actor learning rate (AdamW).", rng=(0.0, None, False, None))
    critic_lr: float = field(1e-3, doc="Peak critic learning rate (AdamW).", rng=(0.0, None, False, None))
    min_lr_ratio: float = field(0.1, doc="Final LR as a fraction of the peak.", rng=(0.0, 1.0, True, True))
    lr_warmup_steps: int = field(0, doc="Linear LR warm-up, in agent updates.", rng=(0, None, True, None))
    lr_decay: Literal["cosine", "linear", "constant"] = field("cosine", doc="LR decay after warm-up.")
    weight_decay: float = field(0.0, doc="AdamW decoupled weight decay.", rng=(0.0, None, True, None))
    grad_clip: float = field(1.0, doc="Gradient-norm clip per net (0 disables).", rng=(0.0, None, True, None))
    kl_coef: float = field(
        1.0,
        doc="beta of the actor's KL(mu(s) || initial weights) penalty. For a linear reward the "
        "regularised optimum is a_i ~ prior_i exp(q_i / beta) (ODM's Gibbs form) instead of one "
        "domain; 0 = the paper's unregularised objective (collapses onto one domain, see docs/algorithm.md).",
        rng=(0.0, None, True, None),
    )
    batch_size: int = field(32, doc="Replay mini-batch.", rng=(1, None, True, None))
    buffer_size: int = field(10000, doc="Replay capacity (FIFO ring).", rng=(1, None, True, None))
    updates_per_step: int = field(1, doc="Agent updates per LM step.", rng=(0, None, True, None))
    warmup_steps: int = field(
        833,
        doc="LM steps during which the behaviour policy replaces the actor (paper: 833).",
        rng=(0, None, True, None),
    )
    warmup_policy: Literal["prior_noise", "odm"] = field(
        "prior_noise",
        doc="Behaviour during warm-up: `prior_noise` = initial weights + N(0, "
        "warmup_noise_std) (paper); `odm` = the ODM bandit (reference code).",
    )
    warmup_noise_std: float = field(0.02, doc="Std of the warm-up weight noise.", rng=(0.0, None, True, None))
    exploration_std: float = field(
        0.01,
        doc="Std of Gaussian noise added to the actor's weights after warm-up.",
        rng=(0.0, None, True, None),
    )
    device: str = field("auto", doc="Agent device on rank 0: `auto` (the model's), `cpu`, `cuda`.")
    actor_init: Literal["random", "prior"] = field(
        "random",
        doc="`random`: a plain softmax MLP (paper); `prior`: softmax(log prior + head(s)) "
        "with a zero-initialised head, so the actor starts exactly at the initial weights.",
    )
    critic_action: Literal["raw", "log_ratio"] = field(
        "raw",
        doc="Action input of the critic: the weights (paper) or log(a / prior), which is "
        "O(1) where raw weights move by +-0.01.",
    )
    objective: Literal["critic", "decomposed"] = field(
        "critic",
        doc="Actor objective: `critic` = max Q(s, mu(s)) (DDPG, paper); `decomposed` = "
        "max rhat . mu(s) + Q_c(s, mu(s)): the immediate reward is linear in the action with the "
        "known coefficient rhat, so its gradient is used exactly and the critic only learns the "
        "continuation value (needs `reward.mode: paper` or `aligned`).",
    )
    noise_space: Literal["weight", "log"] = field(
        "weight",
        doc="Exploration noise: additive in weight units (paper) or multiplicative, "
        "a * exp(std * N(0, 1)) renormalised (never pushes mass onto tiny domains).",
    )

    def _check(self, path: str) -> None:
        """Cross-field checks (called by the typed-YAML engine after the fields)."""
        if self.batch_size > self.buffer_size:
            raise ConfigError(
                f"{path}.batch_size: {self.batch_size} > buffer_size {self.buffer_size}: "
                f"the replay buffer never holds a batch, so the agent never updates"
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"{path}.device: got {self.device!r} (allowed: auto, cpu, cuda, cuda:N)")
