"""The masked Gram estimate and the mirror-descent closed form (``preset: mirror``)."""

from __future__ import annotations

import numpy as np
import torch

from neox_acodm.masked_gram import MaskedGramEstimate
from neox_acodm.mixers import MirrorMixer, StepStats, build_mixer
from neox_acodm.rewards import GramEstimate
from neox_acodm.runtime import MixingRuntime

from conftest import TinyLM, tiny_cfg

# a stationary Gram of per-domain mean gradients (equal norms: the scale is the same every step)
G = torch.tensor([[1.0, 0.6, 0.2, -0.1], [0.6, 1.0, 0.3, 0.0], [0.2, 0.3, 1.0, 0.4], [-0.1, 0.0, 0.4, 1.0]])
C = torch.ones(4) / 4
PI = torch.tensor([0.9, 0.9, 0.9, 0.04])  # domain 3 is drawn in 4 % of the steps


def _final_rare_reward(est, seed: int, steps: int) -> float:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        present = torch.as_tensor(rng.random(4) < PI.numpy())
        if not present.any():
            present[0] = True
        gram = G * (present[:, None] & present[None, :])
        est.update(gram, present, PI, G)  # noise-free: <g_i(t), g_i(t')> = G_ii
    return float(est.reward()[3])


def test_masked_estimate_is_median_unbiased_for_a_rare_domain():
    """After 1/0.04 = 25 steps, over 400 replications, the *median* estimate of the rare domain's
    reward is within 20 % of the truth (the Horvitz-Thompson EMA's median is not)."""
    truth = float((G @ C)[3])
    masked = [_final_rare_reward(MaskedGramEstimate(4, 0.9, "lagged", C), s, 25) for s in range(400)]
    assert abs(np.median(masked) - truth) <= 0.2 * abs(truth), (np.median(masked), truth)
    ht = [_final_rare_reward(GramEstimate(4, 0.9, "lagged", C, 10.0), s, 25) for s in range(400)]
    assert abs(np.median(ht) - truth) > 0.2 * abs(truth)  # the diagnosis (D1): it starves


def test_masked_estimate_spread_shrinks_and_is_inf_before_any_observation():
    est = MaskedGramEstimate(3, 0.9, "raw", [1, 1, 1])
    assert np.isinf(est.spread().numpy()).all()
    rng = np.random.default_rng(0)
    for _ in range(200):
        noise = torch.as_tensor(rng.normal(0, 0.1, (3, 3)))
        est.update(torch.eye(3, dtype=torch.float64) + (noise + noise.T) / 2, torch.ones(3, dtype=torch.bool))
    se = est.spread().numpy()
    assert np.all(np.isfinite(se)) and np.all(se < 0.05)


def _stats(step, w, gram):
    k = len(w)
    return StepStats(
        step=step,
        weights=np.asarray(w),
        probs=np.asarray(w),
        counts=np.ones(k),
        loss=np.ones(k),
        gram=gram.numpy(),
        inclusion=np.ones(k),
        lagged_gram=gram.numpy(),
    )


def test_mirror_descent_converges_to_equal_marginal_value():
    """Diminishing returns: domain i's first-order value is a_i - b w_i (the more of it, the less a
    unit is worth). The fixed point is equal marginal value: w_i = (a_i - lambda) / b."""
    a, b = np.array([1.0, 0.8, 0.5]), 1.0
    lam = (a.sum() - b) / 3
    target = (a - lam) / b  # [0.567, 0.367, 0.067]
    cfg = tiny_cfg(
        "mirror",
        reward={"estimate": "masked", "self_term": "raw"},
        mirror={"kappa": 6.0},
        initial_weights="uniform",
        total_steps=2000,
    )
    mixer = build_mixer(cfg, np.ones(3) / 3, 0, 2000)
    assert isinstance(mixer, MirrorMixer)
    w = np.ones(3) / 3
    for t in range(2000):
        gram = torch.diag(torch.as_tensor(a - b * w))  # c uniform: r_i proportional to a_i - b w_i
        w = mixer.update(_stats(t, w, gram))
    assert np.allclose(w, target, atol=0.03), (w, target)


def test_mirror_ignores_differences_below_their_standard_error():
    """Equal true values plus noise: with the threshold the weights stay near the prior."""
    rng = np.random.default_rng(1)
    cfg = tiny_cfg(
        "mirror", reward={"estimate": "masked", "self_term": "raw"}, initial_weights="uniform", total_steps=500
    )
    moved = {}
    for threshold in (True, False):
        mixer = build_mixer(cfg.replace(mirror={"threshold": threshold}), np.ones(3) / 3, 0, 500)
        w = np.ones(3) / 3
        for t in range(500):
            gram = torch.diag(torch.as_tensor(1.0 + rng.normal(0, 0.3, 3)))
            w = mixer.update(_stats(t, w, gram))
        moved[threshold] = float(np.abs(np.log(w * 3)).max())
    assert moved[True] < moved[False]


def test_preset_mirror_starts_at_the_best_prior_mix():
    from neox_acodm.config import parse_config

    block = {
        "preset": "mirror",
        "total_steps": 10,
        "domains": [{"name": "a", "metric_weight": 2.0}, {"name": "b"}, {"name": "c"}],
        "reward": {"params": {"module": "mlp_out", "layers": [-1]}},
    }
    cfg = parse_config(block)
    assert cfg.mixer == "mirror" and cfg.reward.estimate == "masked" and cfg.initial_weights == "prior"
    rt = MixingRuntime(cfg, dataset_sizes=[50, 60, 70], grad_accum=4, micro_batch=2, model=TinyLM())
    assert np.allclose(rt.weights, [0.5, 0.25, 0.25])  # metric weights 2:1:1 (they differ: the prior)
    assert rt.probe is not None and rt.probe.lagged and rt.norms is None
    equal = parse_config({**block, "domains": [{"name": "a"}, {"name": "b"}, {"name": "c"}]})
    rt2 = MixingRuntime(
        equal,
        dataset_sizes=[50, 60, 70],
        grad_accum=4,
        micro_batch=2,
        model=TinyLM(),
        token_counts=[100.0, 400.0, 900.0],
    )
    assert np.allclose(rt2.weights, np.array([10.0, 20.0, 30.0]) / 60)  # equal metric: tokens^(1/2)


def test_probe_keeps_each_domains_last_observed_gradient_for_the_self_term():
    """A domain absent at step t-1 still gets <g_i(t), g_i(t')> at step t, t' its last draw."""
    from neox_acodm.ops import get_ops
    from neox_acodm.probe import GradientProbe
    from neox_acodm.selectors import SelectedParam

    w = torch.nn.Parameter(torch.zeros(4))
    probe = GradientProbe(
        [SelectedParam("w", 0, w)], 2, "exact", 8, 0, get_ops("torch", torch.device("cpu")), lagged=True
    )
    grads = {0: torch.tensor([1.0, 0, 0, 0]), 1: torch.tensor([0, 2.0, 0, 0])}
    lagged = []
    for domains in ([0, 1], [0], [0, 1]):  # domain 1 skips the middle step
        probe.begin_step(domains)
        for d in domains:
            (w * grads[d]).sum().backward()
        probe.reduce_gram(torch.tensor([domains.count(0), domains.count(1)]))
        lagged.append(probe.lagged_gram)
    assert lagged[0] is None
    assert float(lagged[2][1, 1]) == 4.0  # <g_1(t=2), g_1(t=0)>: the last observation, not zeros
    probe.remove()
