"""The improved mixing signal (issue: mixing that measurably helps): stratified plans,
the unbiased Gram estimate, the same-signal closed form and AC-ODM's `aligned` options."""

import numpy as np
import pytest
import torch

from neox_acodm.config import ConfigError, parse_config
from neox_acodm.mixers import GramSoftmaxMixer, StepStats, build_mixer
from neox_acodm.plan import build_step_plan, inclusion_probs
from neox_acodm.rewards import GramEstimate

from conftest import tiny_cfg

W = np.array([0.5, 0.3, 0.15, 0.05])


def test_stratified_counts_are_floor_or_ceil_and_unbiased():
    n = 16
    counts = np.array([build_step_plan(3, t, W, 2, 8, allocation="stratified").counts for t in range(4000)])
    assert np.all(counts >= np.floor(n * W)) and np.all(counts <= np.ceil(n * W))
    assert np.allclose(counts.mean(0), n * W, atol=0.05)
    iid = np.array([build_step_plan(3, t, W, 2, 8).counts for t in range(4000)])
    assert np.all(counts.var(0) < 0.5 * iid.var(0))  # the point of stratifying
    # inclusion probability: stratified P(count >= 1) = min(1, n w); i.i.d. 1 - (1 - w)^n
    for alloc, c in (("stratified", counts), ("iid", iid)):
        assert np.allclose((c > 0).mean(0), inclusion_probs(W, n, 0, alloc), atol=0.02)


def test_iid_plans_unchanged_by_the_allocation_option():
    a = build_step_plan(5, 17, W, 4, 8, floor=1)
    b = build_step_plan(5, 17, W, 4, 8, floor=1, allocation="iid")
    assert np.array_equal(a.domains, b.domains)
    with pytest.raises(ValueError, match="allocation must be one of"):
        build_step_plan(5, 17, W, 4, 8, allocation="sobol")


def _noisy_gram_stream(steps, rng, true_g, noise, probs, n):
    """Per-step mean gradients: g_i + noise / sqrt(count); domains drawn i.i.d. from probs."""
    for _ in range(steps):
        counts = np.bincount(rng.choice(len(probs), n, p=probs), minlength=len(probs))
        g = np.where(
            counts[:, None] > 0,
            true_g + noise * rng.standard_normal(true_g.shape) / np.sqrt(np.maximum(counts, 1))[:, None],
            0,
        )
        yield counts, torch.as_tensor(g)


def test_gram_estimate_is_unbiased_and_lagged_diagonal_removes_noise():
    rng = np.random.default_rng(0)
    true_g = np.array([[1.0, 0.5, 0.0, 0.2], [0.8, -0.3, 0.4, 0.0], [-0.5, 0.2, 0.9, 0.1]])
    probs = np.array([0.6, 0.3, 0.1])
    n = 4
    incl = 1 - (1 - probs) ** n
    ests = {m: GramEstimate(3, xi=0.0, self_term=m, metric_weights=[1, 1, 1], clip=1e9) for m in ("lagged", "raw")}
    sums = {m: np.zeros((3, 3)) for m in ests}
    prev = None
    steps = 6000
    true_scale = []
    for counts, g in _noisy_gram_stream(steps, rng, true_g, 1.0, probs, n):
        gram = g @ g.T
        present = torch.as_tensor(counts > 0)
        lagged = None if prev is None else g @ prev.T
        prev = g
        scale = float(gram.diagonal()[present].mean())
        for m, est in ests.items():
            est.update(gram, present, torch.as_tensor(incl), lagged)
            sums[m] += est.value.numpy() * scale  # undo the per-step normalisation
        true_scale.append(scale)
    expected = true_g @ true_g.T
    lag = sums["lagged"] / steps
    raw = sums["raw"] / steps
    off = ~np.eye(3, dtype=bool)
    # off-diagonal entries are unbiased under Horvitz-Thompson weighting, whatever the presence
    assert np.allclose(lag[off], expected[off], atol=0.08), (lag, expected)
    # the lagged diagonal is unbiased; the raw one carries the sampling noise (+ d / count)
    assert np.allclose(np.diag(lag), np.diag(expected), atol=0.15), (np.diag(lag), np.diag(expected))
    assert np.all(np.diag(raw) > np.diag(expected) + 0.5)


def test_gram_estimate_reward_uses_metric_weights():
    est = GramEstimate(3, xi=0.5, self_term="raw", metric_weights=[1, 1, 0], clip=10)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -3.0]])
    r = est.update(g @ g.T, torch.tensor([True, True, True]), torch.ones(3))
    # domain 2 only helps itself (metric weight 0) and hurts domain 1: lowest reward
    assert r[2] < r[0] and r[2] < r[1]
    with pytest.raises(ValueError, match="metric weights"):
        GramEstimate(3, 0.5, "raw", [0, 0, 0], 10)


def _stats(t, w, gram, lagged=None, k=3):
    counts = np.maximum(1, np.round(w * 12)).astype(int)
    return StepStats(
        step=t,
        weights=w,
        probs=w,
        counts=counts,
        loss=np.full(k, 3.0),
        gram=gram,
        norms=torch.ones(2),
        update_norms=torch.zeros(2),
        inclusion=np.ones(k),
        lagged_gram=lagged,
    )


GRADS = torch.tensor([[1.0, 1.0, 0.2], [1.0, 0.5, 0.0], [-1.0, 0.3, 0.0]])  # domain 0 helps, 2 hurts


def test_gram_softmax_moves_toward_the_domain_that_helps_the_others():
    cfg = tiny_cfg("gram_softmax", reward={"mode": "aligned", "self_term": "lagged"})
    mixer = build_mixer(cfg, np.ones(3) / 3, 0, 20)
    assert isinstance(mixer, GramSoftmaxMixer)
    gram = GRADS @ GRADS.T
    w = np.ones(3) / 3
    for t in range(20):
        w = mixer.update(_stats(t, w, gram, gram))
    assert w[0] > 1 / 3 > w[2] and w[0] > w[1] > w[2], w
    assert np.isclose(w.sum(), 1.0)


def _aligned(**agent):
    return tiny_cfg(
        "acodm",
        preset="aligned",
        initial_weights="uniform",
        total_steps=200,
        agent={"batch_size": 16, "buffer_size": 256, "hidden_dim": 32, **agent},
    )


def test_aligned_actor_starts_at_the_prior_and_learns_toward_the_helpful_domain():
    prior = np.array([0.2, 0.3, 0.5])
    mixer = build_mixer(_aligned(exploration_std=0.0), prior, 2, 200)
    s0 = mixer.state.build(0, torch.full((3,), 3.0), torch.ones(3), torch.ones(2), torch.zeros(2), extra=torch.zeros(3))
    assert torch.allclose(mixer.agent.act(s0), torch.as_tensor(prior, dtype=torch.float32), atol=1e-6)
    actor0 = {k: v.clone() for k, v in mixer.agent.actor.state_dict().items()}
    gram = GRADS @ GRADS.T
    w = prior
    for t in range(120):
        w = mixer.update(_stats(t, w, gram, gram))
    assert mixer.agent.num_updates > 0
    assert any(not torch.equal(v, actor0[k]) for k, v in mixer.agent.actor.state_dict().items())
    final = mixer.agent.act(mixer.prev_state).numpy()
    assert final[0] > prior[0] + 0.1 and final[2] < prior[2] - 0.2, final


def test_noise_control_stays_at_prior_with_multiplicative_noise():
    prior = np.array([0.2, 0.3, 0.5])
    mixer = build_mixer(_aligned(updates_per_step=0, exploration_std=0.1), prior, 2, 200)
    gram = GRADS @ GRADS.T
    ratios = []
    w = prior
    for t in range(200):
        w = mixer.update(_stats(t, w, gram, gram))
        ratios.append(np.log(w / prior))
    assert mixer.agent.num_updates == 0
    r = np.array(ratios)
    assert np.all(w > 0) and abs(r.mean()) < 0.05  # centred on the prior in log space
    assert 0.05 < (r - r.mean(1, keepdims=True)).std() < 0.2


def test_skipped_step_breaks_the_transition_chain():
    mixer = build_mixer(_aligned(), np.ones(3) / 3, 2, 200)
    gram = GRADS @ GRADS.T
    w = np.ones(3) / 3
    for t in range(3):
        w = mixer.update(_stats(t, w, gram, gram))
    n = len(mixer.agent.replay)
    mixer.skip(_stats(3, w, gram))
    mixer.update(_stats(4, w, gram, gram))
    assert len(mixer.agent.replay) == n  # no (s_2, a_4) transition
    mixer.update(_stats(5, w, gram, gram))
    assert len(mixer.agent.replay) == n + 1


def test_aligned_preset_and_its_checks():
    cfg = tiny_cfg("acodm", preset="aligned", agent={"gamma": 0.7})
    assert cfg.agent.objective == "decomposed" and cfg.agent.gamma == 0.7  # user keys win
    assert cfg.reward.mode == "aligned" and cfg.sampling.allocation == "stratified"
    with pytest.raises(ConfigError, match=r"acodm.preset: got 'algined'; did you mean 'aligned'"):
        parse_config({"preset": "algined", "domains": [{"name": "a"}]})
    with pytest.raises(ConfigError, match="acodm.agent.objective: 'decomposed' needs a scalar reward"):
        parse_config(
            {"domains": [{"name": "a"}], "reward": {"mode": "reference"}, "agent": {"objective": "decomposed"}}
        )
    with pytest.raises(ConfigError, match="acodm.state.include_reward: a proxy target"):
        parse_config(
            {
                "domains": [{"name": "a"}],
                "state": {"include_reward": True},
                "proxy": {"role": "target", "policy_path": "p.pt"},
            }
        )
    with pytest.raises(ConfigError, match=r"acodm.domains\[0\].metric_weight: must be in \[0, inf\)"):
        parse_config({"domains": [{"name": "a", "metric_weight": -1}]})


def test_metric_initial_weights_floor_the_untargeted_domains():
    from neox_acodm.initial import resolve_initial_weights
    from neox_acodm.plan import normalize_weights

    cfg = parse_config(
        {
            "initial_weights": "metric",
            "sampling": {"min_weight": 0.01},
            "domains": [{"name": "a", "metric_weight": 3}, {"name": "b"}, {"name": "noise", "metric_weight": 0}],
        }
    )
    w = normalize_weights(resolve_initial_weights(cfg, None), 0.01)
    assert np.allclose(w, [0.7425, 0.2475, 0.01])
