"""Reward maths on hand-computed Gram matrices."""

import torch

from neox_acodm.rewards import RewardEMA, alignment, paper_alignment, reference_reward, zscore


def test_alignment_is_off_diagonal_row_sum():
    g = torch.tensor([[1.0, 2.0, -1.0], [3.0, 0.0, 3.0], [4.0, -2.0, 5.0]])
    assert torch.equal(alignment(g), torch.tensor([1.0, 6.0, 2.0]))


def test_paper_alignment_is_scale_free_and_favours_aligned_domain():
    grads = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.9, 0.1], [-1.0, 0.2, 0.0]])
    gram = grads @ grads.T
    present = torch.tensor([True, True, True])
    w = paper_alignment(gram, present, clip=10.0)
    w_scaled = paper_alignment(gram * 4096.0**2, present, clip=10.0)  # fp16 loss scale
    assert torch.allclose(w, w_scaled, rtol=1e-5)
    assert w[2] < 0 < w[1] and w[0] > w[2]
    absent = paper_alignment(gram, torch.tensor([True, True, False]), clip=10.0)
    assert absent[2] == 0


def test_reference_reward_is_zscored():
    gram = torch.randn(5, 5)
    gram = gram @ gram.T
    r = reference_reward(gram, clip=999.0)
    assert abs(float(r.mean())) < 1e-5 and r.abs().max() <= 3
    assert torch.equal(zscore(torch.tensor([2.0])), torch.tensor([0.0]))


def test_ema_importance_correction():
    ema = RewardEMA(3, xi=0.5, importance_correction=True, clip=100.0)
    p = torch.tensor([0.5, 0.25, 0.25])
    r1 = ema.update(torch.tensor([1.0, 1.0, 1.0]), p, torch.tensor([True, True, False]))
    assert torch.allclose(r1, torch.tensor([2.0, 4.0, 0.0]))  # first observation: W / p
    r2 = ema.update(torch.tensor([0.0, 1.0, 1.0]), p, torch.tensor([True, True, True]))
    assert torch.allclose(r2, torch.tensor([1.0, 4.0, 4.0]))


def test_reference_reward_ignores_absent_domains():
    g = torch.tensor([[1.0, 0.5], [0.2, 1.0], [0.0, 0.0]])  # domain 2 drew nothing
    gram = g @ g.T
    present = torch.tensor([True, True, False])
    r = reference_reward(gram, clip=999.0, present=present)
    assert r[2] == 0 and torch.allclose(r[:2], reference_reward(gram[:2, :2], clip=999.0))
