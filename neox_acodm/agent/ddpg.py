"""DDPG (Lillicrap et al. 2016) as AC-ODM uses it, with the reference code's defects fixed:

* the actor is optimised by its own optimizer (D1: the reference never stepped it);
* the critic gets only its TD gradient (D2: the reference applied the actor loss to it too);
* targets are computed under ``no_grad`` and have no optimizers (D15, D23);
* non-finite losses skip the update instead of poisoning the nets.

``reward_dim`` 1 = the paper's scalar objective; ``num_domains`` = the reference code's vector
critic, whose actor maximises the unweighted mean of the K Q-heads.

``objective: decomposed`` (our option): the reward is r_t = a_t . c_t with a known coefficient
c_t (the per-domain reward estimate, stored with each transition), so the actor maximises
c(s) . mu(s) + Q_c(s, mu(s)) - beta KL(mu || prior), using the immediate part's gradient
exactly; the critic learns only the continuation Q_c(s, a) = gamma E[c' . mu'(s') + Q_c(s', mu'(s'))].
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .config import AgentConfig
from .networks import Actor, Critic
from .replay import ReplayBuffer


def lr_factor(step: int, warmup: int, total: int, decay: str, min_ratio: float) -> float:
    """LR multiplier after ``step`` updates: linear warm-up, then cosine/linear decay to
    ``min_ratio`` at ``total`` (held afterwards)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    if decay == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    return 1.0 - (1.0 - min_ratio) * p


def _soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters()):
            t.lerp_(o, tau)


class DDPGAgent:
    """Actor-critic with target nets and a replay buffer; lives on rank 0 only."""

    def __init__(
        self,
        cfg: AgentConfig,
        state_dim: int,
        num_domains: int,
        reward_dim: int,
        total_updates: int,
        seed: int,
        device: torch.device | str = "cpu",
        prior: torch.Tensor | None = None,
    ):
        self.cfg = cfg
        self.device = torch.device(device)
        self.state_dim, self.num_domains, self.reward_dim = state_dim, num_domains, reward_dim
        # initialise deterministically from `seed` without touching the caller's global RNG:
        # seed the CPU generator only (torch.manual_seed would also reseed every CUDA generator,
        # which fork_rng(devices=[]) does not restore, and would clobber the training job's
        # restored CUDA RNG state on resume)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            self.actor = Actor(
                state_dim, num_domains, cfg.hidden_dim, cfg.num_layers, residual=cfg.actor_init == "prior", prior=prior
            )
            self.critic = Critic(
                state_dim,
                num_domains,
                cfg.hidden_dim,
                cfg.num_layers,
                reward_dim,
                log_ratio=cfg.critic_action == "log_ratio",
                prior=prior,
            )
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.AdamW(self.actor.parameters(), lr=cfg.actor_lr, weight_decay=cfg.weight_decay)
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=cfg.critic_lr, weight_decay=cfg.weight_decay)
        sched = lambda n: lr_factor(n, cfg.lr_warmup_steps, total_updates, cfg.lr_decay, cfg.min_lr_ratio)
        self.actor_sched = torch.optim.lr_scheduler.LambdaLR(self.actor_opt, sched)
        self.critic_sched = torch.optim.lr_scheduler.LambdaLR(self.critic_opt, sched)
        self.decomposed = cfg.objective == "decomposed"
        self.replay = ReplayBuffer(
            cfg.buffer_size,
            state_dim,
            num_domains,
            reward_dim,
            self.device,
            coef_dim=num_domains if self.decomposed else 0,
        )
        # [K] anchor of the KL penalty (the initial weights); uniform if not given
        p = (
            torch.full((num_domains,), 1.0 / num_domains)
            if prior is None
            else torch.as_tensor(prior, dtype=torch.float32)
        )
        self.log_prior = (p / p.sum()).clamp_min(1e-8).log().to(self.device)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.num_updates = 0
        self.skipped_updates = 0
        self.frozen = False

    # -- acting -------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, state: torch.Tensor) -> torch.Tensor:
        """Deterministic policy mu(s). state: [S] -> weights [K] float32 on the CPU."""
        return self.actor(state.to(self.device, torch.float32)[None])[0].float().cpu()

    def observe(
        self,
        s: torch.Tensor,
        a: torch.Tensor,
        r: torch.Tensor,
        s2: torch.Tensor,
        coef: torch.Tensor | None = None,
        coef_next: torch.Tensor | None = None,
    ) -> None:
        """Store a transition. s, s2: [S]; a: [K]; r: [reward_dim]; coef, coef_next: [K] the
        known reward coefficients at s and s2 (``decomposed`` only)."""
        if self.frozen:
            return
        if self.decomposed and (coef is None or coef_next is None):
            raise ValueError("objective 'decomposed' needs the reward coefficients of s and s2")
        self.replay.add(s.to(self.device), a.to(self.device), r.to(self.device), s2.to(self.device), coef, coef_next)

    # -- learning -----------------------------------------------------------------------------
    def update(self) -> dict[str, float] | None:
        """One DDPG update from a replay mini-batch; None if frozen or the buffer is empty."""
        if self.frozen or len(self.replay) == 0:
            return None
        cfg = self.cfg
        s, a, r, s2, c, c2 = self.replay.sample(cfg.batch_size, self.generator)
        with torch.no_grad():
            mu2 = self.actor_target(s2)
            if self.decomposed:  # continuation only: the immediate reward is c . a, known
                y = cfg.gamma * ((mu2 * c2).sum(-1, keepdim=True) + self.critic_target(s2, mu2))
            else:
                y = r + cfg.gamma * self.critic_target(s2, mu2)
        critic_loss = nn.functional.mse_loss(self.critic(s, a), y)
        if not torch.isfinite(critic_loss):
            self.skipped_updates += 1
            return None
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
        self.critic_opt.step()

        # the actor's loss must not move the critic: freeze it for this backward
        self.critic.requires_grad_(False)
        try:
            mu = self.actor(s)
            actor_loss = -self.critic(s, mu).mean()
            if self.decomposed:
                actor_loss = actor_loss - (mu * c).sum(-1).mean()
            if cfg.kl_coef > 0:  # KL(mu || prior): keeps the Gibbs-like optimum off the vertices
                kl = (mu * (mu.clamp_min(1e-8).log() - self.log_prior)).sum(-1).mean()
                actor_loss = actor_loss + cfg.kl_coef * kl
            self.actor_opt.zero_grad(set_to_none=True)
            if torch.isfinite(actor_loss):
                actor_loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.grad_clip)
                self.actor_opt.step()
            else:
                self.skipped_updates += 1
        finally:
            self.critic.requires_grad_(True)
        _soft_update(self.critic_target, self.critic, cfg.tau)
        _soft_update(self.actor_target, self.actor, cfg.tau)
        self.actor_sched.step()
        self.critic_sched.step()
        self.num_updates += 1
        return {
            "critic_loss": float(critic_loss.detach()),
            "actor_loss": float(actor_loss.detach()),
            "actor_lr": self.actor_opt.param_groups[0]["lr"],
            "critic_lr": self.critic_opt.param_groups[0]["lr"],
        }

    # -- persistence --------------------------------------------------------------------------
    def policy_state_dict(self) -> dict:
        """What proxy transfer needs: the actor and its shape."""
        return {
            "actor": {k: v.cpu() for k, v in self.actor.state_dict().items()},
            "state_dim": self.state_dim,
            "num_domains": self.num_domains,
            "hidden_dim": self.cfg.hidden_dim,
            "num_layers": self.cfg.num_layers,
        }

    def load_policy(self, policy: dict, freeze: bool = True) -> None:
        shape = (policy["state_dim"], policy["num_domains"], policy["hidden_dim"], policy["num_layers"])
        mine = (self.state_dim, self.num_domains, self.cfg.hidden_dim, self.cfg.num_layers)
        if shape != mine:
            raise ValueError(
                f"proxy policy shape (state_dim, domains, hidden_dim, num_layers)={shape} does not "
                f"match this run's {mine}; the source and target runs need the same domains, "
                f"norm-layer count and acodm.agent.hidden_dim/num_layers"
            )
        self.actor.load_state_dict(policy["actor"])
        self.actor_target.load_state_dict(policy["actor"])
        if freeze:
            self.frozen = True
            self.actor.requires_grad_(False)

    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "actor_sched": self.actor_sched.state_dict(),
            "critic_sched": self.critic_sched.state_dict(),
            "replay": self.replay.state_dict(),
            "generator": self.generator.get_state(),
            "num_updates": self.num_updates,
            "skipped_updates": self.skipped_updates,
            "frozen": self.frozen,
        }

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.actor_target.load_state_dict(state["actor_target"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.actor_sched.load_state_dict(state["actor_sched"])
        self.critic_sched.load_state_dict(state["critic_sched"])
        self.replay.load_state_dict(state["replay"])
        self.generator.set_state(state["generator"])
        self.num_updates = state["num_updates"]
        self.skipped_updates = state["skipped_updates"]
        self.frozen = state["frozen"]
        if self.frozen:
            self.actor.requires_grad_(False)
