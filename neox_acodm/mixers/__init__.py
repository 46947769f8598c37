"""Mixers behind one interface, and the factory: the one place that maps ``acodm.mixer`` to a
class. Everything else asks the class (:meth:`Mixer.requirements`, capability flags)."""

from __future__ import annotations

import numpy as np
import torch

from ..schedule import load_schedule
from ..typed_yaml import ConfigError
from .acodm import ACODMMixer
from .base import Block, Mixer, Requirements, StepStats
from .feed import gram_estimate
from .gram import GramSoftmaxMixer
from .mirror import MirrorMixer
from .odm import ODMMixer, exploration_eps
from .static import StaticMixer

__all__ = [
    "MIXERS",
    "ACODMMixer",
    "GramSoftmaxMixer",
    "Mixer",
    "ODMMixer",
    "Requirements",
    "StaticMixer",
    "StepStats",
    "build_mixer",
    "check_block",
    "exploration_eps",
    "inactive_warning",
    "mixer_class",
    "requirements",
]

#: ``acodm.mixer`` value -> class
MIXERS: dict[str, type[Mixer]] = {
    "static": StaticMixer,
    "odm": ODMMixer,
    "acodm": ACODMMixer,
    "gram_softmax": GramSoftmaxMixer,
    "mirror": MirrorMixer,
}


def mixer_class(block: Block) -> type[Mixer]:
    """The class named by ``block.mixer``."""
    return MIXERS[block.mixer]


def requirements(block: Block) -> Requirements:
    """What the configured mixer needs each step (every rank can evaluate this)."""
    return mixer_class(block).requirements(block)


def inactive_warning(block: Block, total_steps: int) -> str | None:
    """A warning when the block keeps its mixer from acting within ``total_steps``."""
    return mixer_class(block).inactive_warning(block, total_steps)


def check_block(block: Block, path: str) -> None:
    """Cross-field checks that depend on the mixer's capabilities; ConfigError names the key."""
    cls = mixer_class(block)

    def able(flag: str) -> str:
        return ", ".join(n for n, c in MIXERS.items() if getattr(c, flag))

    if block.schedule_path is not None and not cls.replays_schedule:
        raise ConfigError(
            f"{path}.schedule_path: replaying a schedule needs mixer {able('replays_schedule')!r}, got {block.mixer!r}"
        )
    if block.shadow and not cls.chooses_weights:
        raise ConfigError(
            f"{path}.shadow: shadow mode observes a mixer that chooses weights "
            f"({able('chooses_weights')}); mixer {block.mixer!r} has nothing to shadow"
        )
    if block.proxy.role != "none" and not cls.learns_policy:
        raise ConfigError(f"{path}.proxy.role: proxy mode needs mixer {able('learns_policy')!r}, got {block.mixer!r}")
    cls.check_block(block, path)


def build_mixer(
    block: Block,
    initial_weights: np.ndarray,
    num_norm_layers: int,
    total_steps: int,
    device: torch.device | str = "cpu",
) -> Mixer:
    """The mixer named by ``block.mixer``, given only the sections it owns."""
    metric_weights = [d.metric_weight for d in block.domains]
    cls = mixer_class(block)
    if cls is StaticMixer:
        schedule = load_schedule(block.schedule_path, block.domain_names) if block.schedule_path else None
        return StaticMixer(initial_weights, schedule)
    if cls is ODMMixer:
        return ODMMixer(initial_weights, block.odm)
    if cls is MirrorMixer:
        return MirrorMixer(
            initial_weights,
            gram_estimate(block.reward, metric_weights),
            block.mirror,
            total_steps,
            block.sampling.min_weight,
        )
    if cls is GramSoftmaxMixer:
        return GramSoftmaxMixer(initial_weights, gram_estimate(block.reward, metric_weights), block.gram)
    return ACODMMixer(
        initial_weights,
        agent=block.agent,
        reward=block.reward,
        state=block.state,
        proxy=block.proxy,
        odm=block.odm,
        metric_weights=metric_weights,
        seed=block.seed,
        num_norm_layers=num_norm_layers,
        total_steps=total_steps,
        device=device,
    )
