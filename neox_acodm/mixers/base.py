"""The interface every mixer implements: weights for the next step from this step's statistics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..agent.config import AgentConfig
from ..config_sections import GramMixerConfig, ODMConfig, ProxyConfig, RewardConfig, StateConfig


class Block(Protocol):
    """What a mixer class reads of the ``acodm:`` block to state its needs (``ACODMConfig``
    satisfies it); the mixer instances themselves get only their own sections."""

    mixer: str
    seed: int
    shadow: bool
    schedule_path: str | None
    agent: AgentConfig
    reward: RewardConfig
    state: StateConfig
    proxy: ProxyConfig
    odm: ODMConfig
    gram: GramMixerConfig

    @property
    def domains(self) -> tuple: ...

    @property
    def domain_names(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Requirements:
    """What a mixer needs each step, decidable on every rank from the config alone; the
    runtime builds the gradient probe, the lagged buffer and the norm features from it.

    gram:        the [K, K] Gram of per-domain mean gradients (a gradient probe).
    lagged_gram: also <g_i(t), g_j(t-1)> (the owner keeps last step's gradients).
    norms:       norm-layer statistics (weight norms and update norms).
    """

    gram: bool = False
    lagged_gram: bool = False
    norms: bool = False


@dataclass(frozen=True)
class StepStats:
    """Globally reduced statistics of one optimizer step (identical on every rank).

    Every field is a host numpy array (torch tensors passed in are converted, dtypes kept), so a
    mixer reads one array type; mixers that compute in torch wrap with ``torch.from_numpy``.

        weights: [K] the weights the step was planned with (the action a_t).
        probs:   [K] realised sampling probabilities (floor included; importance weights use it).
        counts:  [K] micro-batches drawn per domain.
        loss:    [K] mean micro-batch loss per domain, NaN where counts == 0.
        gram:    [K, K] float32 Gram of per-domain mean gradients, or None (no capture).
        norms, update_norms: [L] float32 norm-layer statistics, or None.
        inclusion: [K] P(counts_i >= 1) under the plan's allocation (None: use 1 - (1-p)^n).
        lagged_gram: [K, K] <g_i(t), g_j(t-1)> of the mean gradients, or None.
    """

    step: int
    weights: np.ndarray
    probs: np.ndarray
    counts: np.ndarray
    loss: np.ndarray
    gram: np.ndarray | None = None
    norms: np.ndarray | None = None
    update_norms: np.ndarray | None = None
    inclusion: np.ndarray | None = None
    lagged_gram: np.ndarray | None = None

    def __post_init__(self):
        for name in ("weights", "probs", "counts", "loss", "gram", "norms", "update_norms", "inclusion", "lagged_gram"):
            v = getattr(self, name)
            if isinstance(v, torch.Tensor):
                object.__setattr__(self, name, v.detach().cpu().numpy())
            elif v is not None and not isinstance(v, np.ndarray):
                object.__setattr__(self, name, np.asarray(v))

    @property
    def present(self) -> np.ndarray:
        return self.counts > 0

    def is_finite(self) -> bool:
        """False if any statistic the mixers read is NaN/Inf (such a step must not update them)."""
        if not np.all(np.isfinite(self.loss[self.present])):
            return False
        for t in (self.gram, self.norms, self.update_norms, self.lagged_gram):
            if t is not None and not np.all(np.isfinite(t)):
                return False
        return True


class Mixer(ABC):
    """A stateful policy over domain weights. Runs on the owning rank only.

    Class-level declarations (read from the config, before any mixer is built):
    :meth:`requirements`, :meth:`check_block`, :meth:`inactive_warning` and the capability
    flags below. The factory (:mod:`neox_acodm.mixers`) is the only place that maps a name to
    a class."""

    #: chooses weights of its own (shadow mode observes such a mixer)
    chooses_weights: bool = True
    #: replays ``acodm.schedule_path``
    replays_schedule: bool = False
    #: has a learned policy that proxy mode exports (source) and loads frozen (target)
    learns_policy: bool = False
    #: True if :meth:`update` returns weights to use exactly as they are (a replayed schedule):
    #: the runtime validates them but does not re-project them onto the weight bounds
    final_weights: bool = False

    @classmethod
    def requirements(cls, block: Block) -> Requirements:
        """What :meth:`update` reads besides losses and counts under ``block``."""
        return Requirements()

    @classmethod
    def check_block(cls, block: Block, path: str) -> None:
        """Mixer-specific cross-field checks of the block; raise ConfigError naming the key."""

    @classmethod
    def inactive_warning(cls, block: Block, total_steps: int) -> str | None:
        """A warning when ``block`` keeps this mixer from acting in a run of ``total_steps``."""
        return None

    def __init__(self, initial_weights: np.ndarray):
        self.initial = np.asarray(initial_weights, dtype=np.float64)
        self.last_metrics: dict[str, float] = {}
        #: [K] the per-domain reward estimate of the last update (logged), or None
        self.last_reward: np.ndarray | None = None

    @abstractmethod
    def update(self, stats: StepStats) -> np.ndarray:
        """Return the weights [K] for step ``stats.step + 1`` (unnormalised is fine)."""

    def skip(self, stats: StepStats) -> None:
        """The step had non-finite statistics and :meth:`update` was not called."""

    def export_policy(self, path: str) -> None:
        """Write what a proxy target run loads (only mixers with a learned policy)."""
        raise ValueError(f"acodm.proxy.role: 'source' needs a learned policy; mixer {type(self).__name__} has none")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
