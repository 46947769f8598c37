"""Actor and critic MLPs (Linear -> LayerNorm -> ReLU blocks, as in the reference code)."""

from __future__ import annotations

import torch
from torch import nn


def _body(in_dim: int, hidden: int, num_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.ReLU()]
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """mu(s): state [B, S] -> domain weights [B, K] on the simplex (softmax head)."""

    def __init__(self, state_dim: int, num_domains: int, hidden: int, num_layers: int):
        super().__init__()
        self.body = _body(state_dim, hidden, num_layers)
        self.head = nn.Linear(hidden, num_domains)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.body(state)), dim=-1)


class Critic(nn.Module):
    """Q(s, a): state [B, S], action [B, K] -> [B, out_dim] (1 in paper mode, K in reference)."""

    def __init__(self, state_dim: int, num_domains: int, hidden: int, num_layers: int, out_dim: int):
        super().__init__()
        self.body = _body(state_dim + num_domains, hidden, num_layers)
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.cat([state, action], dim=-1)))
