"""Mixers behind one interface: static, ODM (Exp3) and AC-ODM (DDPG)."""

from __future__ import annotations

import numpy as np
import torch

from ..config import ACODMConfig
from .acodm import ACODMMixer
from .base import Mixer, StepStats
from .gram import GramSoftmaxMixer
from .odm import ODMMixer, exploration_eps
from .static import StaticMixer

__all__ = ["ACODMMixer", "GramSoftmaxMixer", "Mixer", "ODMMixer", "StaticMixer", "StepStats", "build_mixer",
           "exploration_eps"]


def build_mixer(cfg: ACODMConfig, initial_weights: np.ndarray, num_norm_layers: int,
                total_steps: int, device: torch.device | str = "cpu") -> Mixer:
    """The mixer named by ``cfg.mixer``."""
    if cfg.mixer == "static":
        if cfg.schedule_path:
            from ..schedule import load_schedule

            return StaticMixer(initial_weights, load_schedule(cfg.schedule_path, cfg.domain_names))
        return StaticMixer(initial_weights)
    if cfg.mixer == "odm":
        return ODMMixer(initial_weights, cfg.odm)
    if cfg.mixer == "gram_softmax":
        return GramSoftmaxMixer(initial_weights, cfg)
    return ACODMMixer(initial_weights, cfg, num_norm_layers, total_steps, device)
