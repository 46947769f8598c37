"""The torch reference kernels: exact accumulation, Gram, count-sketch error bound."""

import math

import pytest
import torch

from neox_acodm import ops


def test_accumulate_and_gram_exact():
    g = torch.Generator().manual_seed(0)
    buf = torch.zeros(3, 10)
    a, b = torch.randn(6, generator=g), torch.randn(4, generator=g)
    ops.accumulate_domain_grad_torch(buf, a, 1, offset=0)
    ops.accumulate_domain_grad_torch(buf, b.to(torch.bfloat16), 1, offset=6, alpha=2.0)
    ops.accumulate_domain_grad_torch(buf, a, 2, offset=0, alpha=-1.0)
    expect = torch.zeros(3, 10)
    expect[1, :6] = a
    expect[1, 6:] = 2 * b.to(torch.bfloat16).float()
    expect[2, :6] = -a
    assert torch.equal(buf, expect)
    gram = ops.domain_gram_torch(buf)
    assert torch.allclose(gram, (buf.double() @ buf.double().T).float(), rtol=1e-6)


@pytest.mark.parametrize(
    "bad,msg",
    [
        (dict(grad=torch.zeros(4, 2).T), "grad: must be contiguous"),
        (dict(grad=torch.zeros(4, dtype=torch.float64)), "grad: dtype must be"),
        (dict(domain=5), "domain: 5 out of range"),
        (dict(offset=8), "offset:"),
    ],
)
def test_accumulate_rejects_bad_input(bad, msg):
    args = dict(buffer=torch.zeros(2, 10), grad=torch.zeros(4), domain=0, offset=0)
    args.update(bad)
    with pytest.raises(ValueError, match=msg):
        ops.accumulate_domain_grad_torch(**args)


def _sketch(vec, seed, k):
    s = torch.zeros(1, k)
    ops.sketch_accumulate_torch(s, vec, 0, seed)
    return s[0]


def test_sketch_split_by_offset_equals_whole():
    v = torch.randn(1000)
    whole = _sketch(v, 3, 64)
    parts = torch.zeros(1, 64)
    ops.sketch_accumulate_torch(parts, v[:300].contiguous(), 0, 3, offset=0)
    ops.sketch_accumulate_torch(parts, v[300:].contiguous(), 0, 3, offset=300)
    assert torch.allclose(whole, parts[0], atol=1e-5)


def test_sketch_inner_product_within_bound():
    """|<Sa,Sb> - <a,b>| <= 6 sigma, sigma^2 <= 2 |a|^2 |b|^2 / k (count-sketch variance bound)."""
    g = torch.Generator().manual_seed(1)
    n, k = 50_000, 4096
    for trial in range(5):
        a = torch.randn(n, generator=g)
        b = 0.3 * a + torch.randn(n, generator=g)
        est = float(_sketch(a, trial, k).double() @ _sketch(b, trial, k).double())
        exact = float(a.double() @ b.double())
        sigma = math.sqrt(2.0 / k) * float(a.norm() * b.norm())
        assert abs(est - exact) <= 6 * sigma, (est, exact, sigma)


def test_sketch_is_unbiased_over_seeds():
    g = torch.Generator().manual_seed(2)
    n, k, seeds = 2000, 64, 300
    a, b = torch.randn(n, generator=g), torch.randn(n, generator=g)
    exact = float(a.double() @ b.double())
    ests = torch.tensor([float(_sketch(a, s, k).double() @ _sketch(b, s, k).double()) for s in range(seeds)])
    sigma = math.sqrt(2.0 / k) * float(a.norm() * b.norm())
    assert abs(float(ests.mean()) - exact) <= 4 * sigma / math.sqrt(seeds)


def test_hash_is_uniformish_and_signs_balanced():
    idx = torch.arange(200_000)
    bucket, sign = ops.sketch_hash(idx, 0, 104)
    counts = torch.bincount(bucket, minlength=104).double()
    expect = 200_000 / 104
    assert bucket.min() >= 0 and bucket.max() < 104
    assert float(((counts - expect) ** 2 / expect).sum()) < 103 + 6 * math.sqrt(2 * 103)
    assert abs(float(sign.mean())) < 0.01


def test_blocked_sketch_collisions():
    """Elements of one 8-block never share a bucket; across blocks any pair collides ~1/k."""
    k = 64
    bucket, _ = ops.sketch_hash(torch.arange(8 * 5000), 3, k)
    blocks = bucket.reshape(-1, 8)
    assert all(len(set(b.tolist())) == 8 for b in blocks[:500])
    same_lane_pair = (blocks[:-1, 0] == blocks[1:, 0]).double().mean()  # lane 0 of adjacent blocks
    cross_lane_pair = (blocks[:-1, 0] == blocks[1:, 5]).double().mean()  # lane 0 vs lane 5
    for p in (same_lane_pair, cross_lane_pair):
        assert abs(float(p) - 1 / k) < 4 * math.sqrt((1 / k) / 5000)


def test_backend_selection(monkeypatch):
    monkeypatch.setenv("NEOX_ACODM_OPS", "torch")
    assert ops.get_ops("ext").name == "torch"
    monkeypatch.setenv("NEOX_ACODM_OPS", "fast")
    with pytest.raises(ValueError, match="NEOX_ACODM_OPS"):
        ops.get_ops()
