"""ODM reproduces its published update on a hand-computed example."""

import math

import numpy as np

from neox_acodm.config import ODMConfig
from neox_acodm.mixers import ODMMixer, StepStats, exploration_eps


def stats(step, loss, probs, counts):
    return StepStats(
        step=step,
        weights=np.asarray(probs),
        probs=np.asarray(probs, float),
        counts=np.asarray(counts),
        loss=np.asarray(loss, float),
    )


def test_eps_schedule():
    assert exploration_eps(22, 1) == 1 / 22
    assert math.isclose(exploration_eps(22, 2000), math.sqrt(math.log(22) / (22 * 2000)))
    assert math.isclose(exploration_eps(22, 2000), 0.0083, abs_tol=1e-4)  # spec: 0.0084 at 2000


def test_paper_update_by_hand():
    # K = 2, alpha = 0.5. Step 1: losses (2, 1), sampled with pi = (0.5, 0.5).
    m = ODMMixer(np.array([0.5, 0.5]), ODMConfig(variant="paper", smoothing=0.5))
    w = m.update(stats(0, [2.0, 1.0], [0.5, 0.5], [3, 1]))
    # R = 0.5*0 + 0.5 * L/pi = (2, 1); t = 1: eps_prev = 1/2, eps = min(1/2, sqrt(ln2/2)) = 1/2
    # pi = (1 - 2*0.5) * softmax(...) + 0.5 = (0.5, 0.5)
    assert np.allclose(m.reward, [2.0, 1.0]) and np.allclose(w, [0.5, 0.5])
    # K = 3 hand example: losses (3, 1, 2), pi = (0.2, 0.5, 0.3), domain 2 absent
    m = ODMMixer(np.ones(3) / 3, ODMConfig(variant="paper", smoothing=0.9))
    m.t = 99
    m.eps = exploration_eps(3, 99)
    w = m.update(stats(200, [3.0, 1.0, np.nan], [0.2, 0.5, 0.3], [2, 5, 0]))
    r = np.array([0.1 * 3 / 0.2, 0.1 * 1 / 0.5, 0.0])  # 1.5, 0.2, 0 (absent keeps 0)
    assert np.allclose(m.reward, r)
    eps_prev, eps = exploration_eps(3, 99), exploration_eps(3, 100)
    g = np.exp(eps_prev * r) / np.exp(eps_prev * r).sum()
    expect = (1 - 3 * eps) * g + eps
    assert np.allclose(w, expect)
    # the highest-loss domain gains weight
    assert w[0] > w[1] and w[0] > w[2]


def test_smoothed_mean_and_exp3_variants():
    m = ODMMixer(np.ones(2) / 2, ODMConfig(variant="smoothed_mean", smoothing=0.5))
    m.t, m.eps = 199, exploration_eps(2, 199)
    w = m.update(stats(10, [1.0, 2.0], [0.5, 0.5], [1, 1]))
    r = 0.5 * np.exp([1.0, 2.0])
    eps = exploration_eps(2, 200)
    assert np.allclose(w, (1 - 2 * eps) * r / r.sum() + eps)
    m = ODMMixer(np.ones(2) / 2, ODMConfig(variant="exp3", reward_scale=0.1))
    m.update(stats(0, [1.0, 2.0], [0.25, 0.75], [1, 1]))
    m.update(stats(1, [1.0, 2.0], [0.25, 0.75], [1, 1]))
    assert np.allclose(m.reward, 2 * np.array([0.1 / 0.25, 0.2 / 0.75]))


def test_warmup_keeps_initial_weights():
    init = np.array([0.7, 0.3])
    m = ODMMixer(init, ODMConfig(warmup_steps=5))
    for t in range(4):
        assert np.array_equal(m.update(stats(t, [5.0, 1.0], init, [1, 1])), init)
    assert m.t == 0
    m.update(stats(4, [5.0, 1.0], init, [1, 1]))
    assert m.t == 1
