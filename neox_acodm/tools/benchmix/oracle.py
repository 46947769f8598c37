"""The oracle static mix: the best static mix a sweep finds, on seeds not used for reporting.

A sweep costs what the online mixers are meant to save (tens of runs), so its winner is the
reference an online mixer's *regret* is measured against: the candidates are the
prior-information mixes (natural, uniform, metric-weighted, temperature) plus Dirichlet(1)
draws over the simplex (seeded), each trained on the sweep seeds; the lowest mean metric wins
and is then trained on the reporting seeds like any other mixer (``oracle_static``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = ["candidate_mixes", "pick_best", "sweep"]


def candidate_mixes(named: Mapping[str, Sequence[float]], k: int, draws: int, seed: int) -> dict[str, list[float]]:
    """``named`` mixes (each normalised) plus ``draws`` Dirichlet(1) mixes over K domains."""
    out = {}
    for name, w in named.items():
        w = np.asarray(w, dtype=np.float64)
        out[name] = (w / w.sum()).tolist()
    rng = np.random.default_rng([seed, k, draws])
    for i in range(draws):
        out[f"dirichlet{i}"] = rng.dirichlet(np.ones(k)).tolist()
    return out


def pick_best(scores: Mapping[str, Sequence[float]]) -> str:
    """The candidate with the lowest mean score (ties: the first in order)."""
    return min(scores, key=lambda name: (float(np.mean(scores[name])), list(scores).index(name)))


def sweep(
    candidates: Mapping[str, Sequence[float]], seeds: Sequence[int], score: Callable[[Sequence[float], int], float]
) -> tuple[str, dict[str, list[float]]]:
    """Score every candidate on every sweep seed; returns (best name, scores per candidate)."""
    scores = {name: [float(score(w, s)) for s in seeds] for name, w in candidates.items()}
    return pick_best(scores), scores
