"""Fixed-capacity FIFO replay buffer of (s, a, r, s') transitions, stored as preallocated tensors."""

from __future__ import annotations

import torch


class ReplayBuffer:
    """Ring buffer. states: [C, S], actions: [C, K], rewards: [C, R], next_states: [C, S];
    with ``coef_dim`` > 0 also coefs / next_coefs: [C, coef_dim] (known reward coefficients)."""

    _FIELDS = ("states", "actions", "rewards", "next_states", "coefs", "next_coefs")

    def __init__(
        self,
        capacity: int,
        state_dim: int,
        action_dim: int,
        reward_dim: int,
        device: torch.device | str = "cpu",
        coef_dim: int = 0,
    ):
        self.capacity = capacity
        self.device = torch.device(device)
        self.states = torch.zeros(capacity, state_dim, device=self.device)
        self.actions = torch.zeros(capacity, action_dim, device=self.device)
        self.rewards = torch.zeros(capacity, reward_dim, device=self.device)
        self.next_states = torch.zeros(capacity, state_dim, device=self.device)
        self.coefs = torch.zeros(capacity, coef_dim, device=self.device)
        self.next_coefs = torch.zeros(capacity, coef_dim, device=self.device)
        self.size = 0
        self.cursor = 0

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        s: torch.Tensor,
        a: torch.Tensor,
        r: torch.Tensor,
        s2: torch.Tensor,
        c: torch.Tensor | None = None,
        c2: torch.Tensor | None = None,
    ) -> None:
        i = self.cursor
        if self.coefs.shape[1]:
            self.coefs[i] = c.to(self.device, torch.float32)
            self.next_coefs[i] = c2.to(self.device, torch.float32)
        self.states[i] = s
        self.actions[i] = a
        self.rewards[i] = r.reshape(-1)
        self.next_states[i] = s2
        self.cursor = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Uniform without replacement (with replacement while fewer than ``batch_size``)."""
        if self.size >= batch_size:
            idx = torch.randperm(self.size, generator=generator)[:batch_size]
        else:
            idx = torch.randint(self.size, (batch_size,), generator=generator)
        idx = idx.to(self.device)
        return tuple(getattr(self, name)[idx] for name in self._FIELDS)

    def state_dict(self) -> dict:
        n = self.size
        return {
            "capacity": self.capacity,
            "size": n,
            "cursor": self.cursor,
            **{name: getattr(self, name)[:n].cpu().clone() for name in self._FIELDS},
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(
                f"replay buffer capacity changed: checkpoint {state['capacity']}, "
                f"config acodm.agent.buffer_size={self.capacity}"
            )
        n = state["size"]
        self.size, self.cursor = n, state["cursor"]
        for name in self._FIELDS:
            if name in state:
                getattr(self, name)[:n] = state[name].to(self.device)
