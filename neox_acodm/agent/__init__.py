"""DDPG agent: networks, replay buffer and the update rule."""

from .ddpg import DDPGAgent
from .networks import Actor, Critic
from .replay import ReplayBuffer

__all__ = ["Actor", "Critic", "DDPGAgent", "ReplayBuffer"]
