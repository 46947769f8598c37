"""DDPG learns, updates both nets, moves targets by tau (the reference never stepped its actor)."""

import copy

import torch

from neox_acodm.agent import DDPGAgent
from neox_acodm.agent.ddpg import lr_factor
from neox_acodm.config import AgentConfig

CFG = AgentConfig(
    hidden_dim=64,
    num_layers=2,
    actor_lr=1e-3,
    critic_lr=1e-3,
    tau=0.05,
    batch_size=32,
    gamma=0.5,
    lr_decay="constant",
    warmup_steps=0,
    kl_coef=0.0,
)


def flat(m):
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()]).clone()


def test_policy_concentrates_on_best_domain():
    k, s_dim = 5, 8
    agent = DDPGAgent(CFG, s_dim, k, 1, total_updates=1000, seed=0)
    reward = torch.tensor([0.1, 0.2, 1.0, 0.0, -0.5])
    g = torch.Generator().manual_seed(0)
    s = torch.randn(s_dim, generator=g)
    assert agent.act(s)[2] < 0.5
    for _ in range(200):  # bounded: 200 environment steps, <= 169 updates
        a = (agent.act(s) + 0.1 * torch.randn(k, generator=g)).clamp_min(0)
        a = a / a.sum()
        agent.observe(s, a, (a * reward).sum().reshape(1), s)
        if len(agent.replay) >= CFG.batch_size:
            agent.update()
    w = agent.act(s)
    assert w[2] > 0.8, w


def _bandit(cfg, steps=200):
    k, s_dim = 5, 8
    agent = DDPGAgent(cfg, s_dim, k, 1, total_updates=1000, seed=0)
    reward = torch.tensor([0.1, 0.2, 1.0, 0.0, -0.5])
    g = torch.Generator().manual_seed(0)
    s = torch.randn(s_dim, generator=g)
    for _ in range(steps):
        a = (agent.act(s) + 0.1 * torch.randn(k, generator=g)).clamp_min(0)
        a = a / a.sum()
        agent.observe(s, a, (a * reward).sum().reshape(1), s)
        if len(agent.replay) >= cfg.batch_size:
            agent.update()
    return agent.act(s)


def test_kl_penalty_keeps_policy_spread_but_ordered():
    """With KL(mu || uniform) the optimum of a linear reward is a Gibbs policy: every domain
    keeps mass, the best domain gets the most, the worst the least."""
    import dataclasses

    w = _bandit(dataclasses.replace(CFG, kl_coef=0.5), steps=300)
    assert int(w.argmax()) == 2 and int(w.argmin()) == 4, w
    assert float(w.min()) > 0.02 and float(w.max()) < 0.9, w


def test_update_changes_actor_and_critic_and_targets_move_by_tau():
    agent = DDPGAgent(CFG, 4, 3, 1, total_updates=100, seed=1)
    g = torch.Generator().manual_seed(1)
    for _ in range(40):
        agent.observe(
            torch.randn(4, generator=g),
            torch.softmax(torch.randn(3, generator=g), 0),
            torch.randn(1, generator=g),
            torch.randn(4, generator=g),
        )
    actor0, critic0 = flat(agent.actor), flat(agent.critic)
    at0, ct0 = flat(agent.actor_target), flat(agent.critic_target)
    out = agent.update()
    assert out is not None and set(out) >= {"critic_loss", "actor_loss"}
    actor1, critic1 = flat(agent.actor), flat(agent.critic)
    assert not torch.equal(actor0, actor1), "actor did not change"
    assert not torch.equal(critic0, critic1), "critic did not change"
    # targets: t1 = (1 - tau) t0 + tau * online1
    assert torch.allclose(flat(agent.actor_target), (1 - CFG.tau) * at0 + CFG.tau * actor1, atol=1e-6)
    assert torch.allclose(flat(agent.critic_target), (1 - CFG.tau) * ct0 + CFG.tau * critic1, atol=1e-6)
    # targets have no optimizer state and no gradients
    assert all(p.grad is None and not p.requires_grad for p in agent.actor_target.parameters())
    assert len(agent.actor_opt.param_groups[0]["params"]) == len(list(agent.actor.parameters()))


def test_actor_loss_does_not_move_critic():
    agent = DDPGAgent(CFG, 4, 3, 1, total_updates=100, seed=2)
    for _ in range(40):
        agent.observe(torch.randn(4), torch.ones(3) / 3, torch.randn(1), torch.randn(4))
    ref = copy.deepcopy(agent)
    agent.update()
    # replay the critic step alone on the copy: the critic must match exactly
    s, a, r, s2, _, _ = ref.replay.sample(CFG.batch_size, ref.generator)
    with torch.no_grad():
        y = r + CFG.gamma * ref.critic_target(s2, ref.actor_target(s2))
    loss = torch.nn.functional.mse_loss(ref.critic(s, a), y)
    ref.critic_opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ref.critic.parameters(), CFG.grad_clip)
    ref.critic_opt.step()
    assert torch.equal(flat(ref.critic), flat(agent.critic))


def test_nonfinite_reward_skips_update():
    agent = DDPGAgent(CFG, 4, 3, 1, total_updates=100, seed=3)
    for _ in range(40):
        agent.observe(torch.randn(4), torch.ones(3) / 3, torch.tensor([float("nan")]), torch.randn(4))
    before = flat(agent.critic)
    assert agent.update() is None and agent.skipped_updates == 1
    assert torch.equal(before, flat(agent.critic))


def test_frozen_agent_never_learns():
    agent = DDPGAgent(CFG, 4, 3, 1, total_updates=100, seed=4)
    agent.load_policy(agent.policy_state_dict(), freeze=True)
    agent.observe(torch.randn(4), torch.ones(3) / 3, torch.ones(1), torch.randn(4))
    assert len(agent.replay) == 0 and agent.update() is None


def test_lr_schedule():
    assert lr_factor(0, 10, 100, "cosine", 0.1) == 0.1
    assert lr_factor(9, 10, 100, "cosine", 0.1) == 1.0
    assert abs(lr_factor(100, 10, 100, "cosine", 0.1) - 0.1) < 1e-12
    assert abs(lr_factor(55, 10, 100, "linear", 0.0) - 0.5) < 1e-12
    assert lr_factor(500, 0, 100, "constant", 0.1) == 1.0


def test_agent_construction_leaves_every_global_rng_untouched(monkeypatch):
    """Building the agent must not reseed CUDA generators (on a GPU that clobbered the training
    job's restored RNG state on resume: Megatron dropout diverged after a restart)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: calls.append(("all", s)))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda s: calls.append(("one", s)))
    cpu_state = torch.get_rng_state()
    a = DDPGAgent(
        AgentConfig(hidden_dim=16, num_layers=2), state_dim=5, num_domains=3, reward_dim=3, total_updates=10, seed=11
    )
    b = DDPGAgent(
        AgentConfig(hidden_dim=16, num_layers=2), state_dim=5, num_domains=3, reward_dim=3, total_updates=10, seed=11
    )
    assert calls == []
    assert torch.equal(torch.get_rng_state(), cpu_state)
    for k, v in a.actor.state_dict().items():  # still a pure function of the seed
        assert torch.equal(v, b.actor.state_dict()[k])
