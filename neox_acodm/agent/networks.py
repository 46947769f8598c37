"""Actor and critic MLPs (Linear -> LayerNorm -> ReLU blocks, as in the reference code)."""

from __future__ import annotations

import torch
from torch import nn


def _body(in_dim: int, hidden: int, num_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.ReLU()]
    return nn.Sequential(*layers)


def _log_prior(num_domains: int, prior: torch.Tensor | None) -> torch.Tensor:
    p = torch.full((num_domains,), 1.0 / num_domains) if prior is None else torch.as_tensor(prior, dtype=torch.float32)
    return (p / p.sum()).clamp_min(1e-8).log()


class Actor(nn.Module):
    """mu(s): state [B, S] -> domain weights [B, K] on the simplex (softmax head).

    ``residual``: softmax(log prior + head(body(s))) with a zero-initialised head, so mu(s) is
    exactly the prior until the actor learns (paper: a plain softmax of a random MLP).
    """

    def __init__(
        self,
        state_dim: int,
        num_domains: int,
        hidden: int,
        num_layers: int,
        residual: bool = False,
        prior: torch.Tensor | None = None,
    ):
        super().__init__()
        self.body = _body(state_dim, hidden, num_layers)
        self.head = nn.Linear(hidden, num_domains)
        self.residual = residual
        self.register_buffer("log_prior", _log_prior(num_domains, prior) if residual else torch.zeros(num_domains))
        if residual:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.body(state)) + self.log_prior, dim=-1)


class Critic(nn.Module):
    """Q(s, a): state [B, S], action [B, K] -> [B, out_dim] (1 in paper mode, K in reference).

    ``log_ratio``: the action enters as log(a / prior) (O(1)) instead of raw weights.
    """

    def __init__(
        self,
        state_dim: int,
        num_domains: int,
        hidden: int,
        num_layers: int,
        out_dim: int,
        log_ratio: bool = False,
        prior: torch.Tensor | None = None,
    ):
        super().__init__()
        self.body = _body(state_dim + num_domains, hidden, num_layers)
        self.head = nn.Linear(hidden, out_dim)
        self.log_ratio = log_ratio
        self.register_buffer("log_prior", _log_prior(num_domains, prior))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if self.log_ratio:
            action = action.clamp_min(1e-8).log() - self.log_prior
        return self.head(self.body(torch.cat([state, action], dim=-1)))
