"""Step plan determinism, frequencies, rank disjointness; cursors never repeat or drop."""

import numpy as np
import pytest

from neox_acodm.plan import DomainCursors, build_step_plan, normalize_weights


def test_same_inputs_same_plan():
    w = normalize_weights([1, 2, 3, 4])
    a = build_step_plan(5, 17, w, dp_size=4, grad_accum=8, floor=1)
    b = build_step_plan(5, 17, w.copy(), dp_size=4, grad_accum=8, floor=1)
    assert np.array_equal(a.domains, b.domains) and a.domains.shape == (4, 8)
    c = build_step_plan(5, 18, w, dp_size=4, grad_accum=8, floor=1)
    assert not np.array_equal(a.domains, c.domains)
    d = build_step_plan(6, 17, w, dp_size=4, grad_accum=8, floor=1)
    assert not np.array_equal(a.domains, d.domains)


def test_frequencies_match_weights_chi_square():
    w = normalize_weights([0.5, 0.25, 0.15, 0.1])
    counts = np.zeros(4)
    steps = 400
    for t in range(steps):
        counts += build_step_plan(1, t, w, dp_size=2, grad_accum=16).counts
    n = counts.sum()
    chi2 = float(((counts - n * w) ** 2 / (n * w)).sum())
    # 3 degrees of freedom: P(chi2 > 16.27) = 0.001
    assert chi2 < 16.27, (counts / n, w)


def test_floor_and_probs():
    w = normalize_weights([0.97, 0.01, 0.01, 0.01])
    for t in range(20):
        p = build_step_plan(3, t, w, dp_size=2, grad_accum=8, floor=2)
        assert (p.counts >= 2).all() and p.counts.sum() == 16
    assert np.isclose(p.probs.sum(), 1.0)
    assert np.allclose(p.probs, (2 + 8 * w) / 16)
    with pytest.raises(ValueError, match="min_microbatches_per_domain=3 x 4 domains exceeds"):
        build_step_plan(3, 0, w, dp_size=2, grad_accum=4, floor=3)


def test_ranks_get_disjoint_samples_and_no_sample_repeats_within_an_epoch():
    sizes = [64, 48, 80]
    cur = DomainCursors(sizes, seed=9)
    seen = [set() for _ in sizes]
    w = normalize_weights([1, 1, 1])
    mb = 4
    consumed = np.zeros(3, dtype=int)
    for t in range(6):
        plan = build_step_plan(9, t, w, dp_size=3, grad_accum=2)
        starts = cur.assign(plan, mb)
        per_rank = []
        for r in range(3):
            idx = set()
            for d, s in zip(plan.domains[r], starts[r]):
                got = cur.sample_indices(int(d), int(s), mb)
                idx |= {(int(d), int(i)) for i in got}
                for i in got:
                    if consumed[d] < sizes[d]:
                        assert int(i) not in seen[d], "sample repeated before the epoch ended"
                    seen[d].add(int(i))
                    consumed[d] += 1
            per_rank.append(idx)
        for a in range(3):
            for b in range(a + 1, 3):
                assert not per_rank[a] & per_rank[b], "two DP ranks drew the same sample"


def test_weight_changes_never_repeat_or_drop():
    """Each domain's stream is consumed in order whatever the weights do."""
    sizes = [40, 40]
    cur = DomainCursors(sizes, seed=1)
    drawn = [[], []]
    rng = np.random.default_rng(0)
    for t in range(30):
        w = normalize_weights(rng.random(2) + 0.01)  # weights jump every step
        plan = build_step_plan(1, t, w, dp_size=2, grad_accum=2)
        starts = cur.assign(plan, 2)
        for g in range(2):
            for r in range(2):
                d = int(plan.domains[r, g])
                drawn[d].extend(cur.sample_indices(d, int(starts[r, g]), 2).tolist())
    for d in range(2):
        n = len(drawn[d])
        full = n // sizes[d]
        for e in range(full):  # every complete epoch is a permutation: nothing dropped/repeated
            assert sorted(drawn[d][e * sizes[d] : (e + 1) * sizes[d]]) == list(range(sizes[d]))
        assert len(set(drawn[d][full * sizes[d] :])) == n - full * sizes[d]
    assert cur.positions.tolist() == [len(drawn[0]), len(drawn[1])]


def test_cursor_state_round_trip_and_mismatch():
    cur = DomainCursors([10, 20], seed=2)
    cur.positions[:] = [13, 4]
    other = DomainCursors([10, 20], seed=2)
    other.load_state_dict(cur.state_dict())
    assert np.array_equal(other.sample_indices(0, 13, 5), cur.sample_indices(0, 13, 5))
    with pytest.raises(ValueError, match="datasets changed"):
        DomainCursors([10, 21], seed=2).load_state_dict(cur.state_dict())


def test_normalize_weights_bounds_and_bad_input():
    w = normalize_weights([100, 1, 1, 1], min_weight=0.05, max_weight=0.6)
    assert np.isclose(w.sum(), 1) and w.min() >= 0.05 - 1e-12 and w.max() <= 0.6 + 1e-12
    for bad in ([np.nan, 1], [np.inf, 1], [-1, 2], [0, 0]):
        with pytest.raises(ValueError):
            normalize_weights(bad)


def test_slot_warning_when_a_step_has_fewer_micro_batches_than_domains():
    from types import SimpleNamespace

    from neox_acodm.plan import slot_warning

    sampling = SimpleNamespace(min_microbatches_per_domain=0, allocation="stratified", granularity="microbatch")
    w = normalize_weights(np.r_[np.full(21, 0.9986 / 21), 0.0014])
    msg = slot_warning(w, dp_size=1, grad_accum=16, sampling=sampling)
    # domain 21 (weight 0.0014) wins one of 16 stratified slots with probability 16 x 0.0014
    assert "16 micro-batches (dp_size x grad_accum = 1 x 16) for 22 domains" in msg
    assert "domain 21 (weight 0.0014)" in msg and "drawn in 2.2 % of the steps" in msg
    assert "sampling.granularity: sample" in msg and "dp_size x grad_accum >= 22" in msg
    assert slot_warning(w, dp_size=2, grad_accum=11, sampling=sampling) is None
    # mixed micro-batches: the 16 micro-batches of 32 samples are 512 slots, enough for 22 domains
    mixed = SimpleNamespace(**{**vars(sampling), "granularity": "sample"})
    assert slot_warning(w, dp_size=1, grad_accum=16, sampling=mixed, micro_batch=32) is None


def test_runtime_warns_at_start_up_only_when_the_mixer_reads_per_domain_gradients(caplog, tiny_model):
    from neox_acodm.runtime import MixingRuntime

    from conftest import tiny_cfg

    for mixer, warned in (("static", False), ("gram_softmax", True)):
        caplog.clear()
        MixingRuntime(tiny_cfg(mixer, k=4), grad_accum=2, micro_batch=1, model=tiny_model).close()
        assert ("micro-batches (dp_size x grad_accum = 1 x 2) for 4 domains" in caplog.text) is warned, mixer
