"""The keyed per-index permutation behind each domain's epoch order."""

import numpy as np
import pytest

from neox_acodm.order import KeyedPermutation, epoch_key
from neox_acodm.plan import DomainCursors


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 16, 17, 255, 256, 257, 1000, 4097])
def test_every_size_gets_a_bijection(n):
    perm = KeyedPermutation(n, epoch_key(1, 2, 3))
    out = perm(np.arange(n))
    assert sorted(out.tolist()) == list(range(n))


def test_order_is_a_pure_function_of_the_key_and_keys_differ():
    n = 10_000
    a = KeyedPermutation(n, epoch_key(7, 0, 0))(np.arange(n))
    b = KeyedPermutation(n, epoch_key(7, 0, 0))(np.arange(n))
    assert np.array_equal(a, b)
    for other in (epoch_key(7, 0, 1), epoch_key(7, 1, 0), epoch_key(8, 0, 0)):
        c = KeyedPermutation(n, other)(np.arange(n))
        assert (a == c).mean() < 0.01, "another (seed, domain, epoch) gave nearly the same order"


def test_any_slice_of_positions_matches_the_whole_permutation():
    """Per-index evaluation: positions can be asked in any chunk and order."""
    n = 3001
    perm = KeyedPermutation(n, epoch_key(5))
    whole = perm(np.arange(n))
    rng = np.random.default_rng(0)
    pos = rng.integers(0, n, size=500)
    assert np.array_equal(perm(pos), whole[pos])


def test_orders_look_uniformly_random():
    """Over many keys, where position 0 lands is uniform and consecutive positions are unrelated."""
    n, keys = 100, 4000
    first = np.array([KeyedPermutation(n, epoch_key(9, k))(np.array([0]))[0] for k in range(keys)])
    counts = np.bincount(first // 10, minlength=10)
    chi2 = float(((counts - keys / 10) ** 2 / (keys / 10)).sum())
    assert chi2 < 27.9, counts  # 9 dof, p = 0.001
    out = KeyedPermutation(100_000, epoch_key(3))(np.arange(100_000)).astype(float)
    assert abs(np.corrcoef(out[:-1], out[1:])[0, 1]) < 0.02
    assert abs(np.corrcoef(np.arange(100_000), out)[0, 1]) < 0.02


def test_positions_outside_the_domain_are_refused():
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        KeyedPermutation(10, 1)(np.array([10]))
    with pytest.raises(ValueError, match="n >= 1"):
        KeyedPermutation(0, 1)


def test_pile_sized_domain_draws_without_materialising_its_epoch():
    """A 150 M-sample domain: drawing a micro-batch at any position never builds the epoch."""
    import tracemalloc

    cur = DomainCursors([150_000_000, 3], seed=1)
    cur.sample_indices(1, 0, 8)  # warm numpy's own caches
    tracemalloc.start()
    for start in (0, 149_999_990, 10**12):  # first draw, an epoch boundary, far into the run
        idx = cur.sample_indices(0, start, 32)
        assert ((idx >= 0) & (idx < 150_000_000)).all() and len(set(idx.tolist())) == 32
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4_000_000, f"{peak} bytes traced for three micro-batches (the epoch would be 1.2 GB)"


def test_cursor_state_of_another_order_is_refused():
    cur = DomainCursors([10, 20], seed=2)
    state = cur.state_dict()
    state.pop("order")
    with pytest.raises(ValueError, match="sample order 'permutation-v0'.*feistel-v1"):
        DomainCursors([10, 20], seed=2).load_state_dict(state)
