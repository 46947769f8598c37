"""The oracle-static sweep picks the known best mix on a synthetic loss."""

import numpy as np

from neox_acodm.tools.benchmix.oracle import candidate_mixes, pick_best, sweep


def test_sweep_picks_the_known_best_mix_on_a_synthetic_loss():
    best = np.array([0.6, 0.3, 0.1])

    def loss(w, seed):  # a quadratic bowl around `best`, plus seed noise well below the gaps
        noise = np.random.default_rng(seed).normal(0, 1e-4)
        return float(np.sum((np.asarray(w) - best) ** 2)) + noise

    cands = candidate_mixes({"uniform": [1, 1, 1], "near_best": [0.58, 0.31, 0.11], "natural": [5, 3, 2]}, 3, 24, 0)
    assert len(cands) == 27 and all(abs(sum(w) - 1) < 1e-12 for w in cands.values())
    name, scores = sweep(cands, [101, 102], loss)
    assert name == "near_best" and set(scores) == set(cands) and all(len(v) == 2 for v in scores.values())
    # the winner is the candidate nearest the bowl's minimum
    dist = {n: np.sum((np.asarray(w) - best) ** 2) for n, w in cands.items()}
    assert name == min(dist, key=dist.get)


def test_candidates_are_seeded_and_ties_keep_order():
    a = candidate_mixes({}, 4, 5, 7)
    assert a == candidate_mixes({}, 4, 5, 7) and a != candidate_mixes({}, 4, 5, 8)
    assert pick_best({"x": [1.0, 1.0], "y": [1.0, 1.0], "z": [2.0, 0.0]}) == "x"


def test_anneal_probe_schedule_moves_half_of_the_oracle_mix_to_the_metric_late(tmp_path):
    """The path-dependence probe: the oracle mix until 2/3 of the run, then half of it on the metric."""
    from neox_acodm.schedule import load_schedule
    from neox_acodm.tools.benchmix.run import _anneal_schedule
    from neox_acodm.tools.benchmix.scenario import load_scenario, size_of

    sc = load_scenario("transfer")
    size = size_of(sc, "cpu")
    oracle = {"weights": np.array([0.2, 0.5, 0.2, 0.1])}
    sched = load_schedule(_anneal_schedule(sc, size, oracle, tmp_path), [d.name for d in sc.domains])
    assert sched.starts == (0, 160)  # 2/3 of 240 steps
    assert np.allclose(sched.weights_at(0), [0.2, 0.5, 0.2, 0.1])
    late = sched.weights_at(239)
    assert np.isclose(late.sum(), 1) and late[0] > 0.59 and np.all(late >= sc.min_weight - 1e-12)
    assert np.allclose(late[1:] / late[1:].sum(), [0.5 / 0.8, 0.2 / 0.8, 0.1 / 0.8], atol=0.01)
