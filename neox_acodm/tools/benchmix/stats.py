"""Metrics of one run and paired comparisons across seeds (mean, s.d., 95 % t-interval)."""

from __future__ import annotations

import math

import numpy as np

# two-sided 95 % Student-t quantiles t_{0.975, df}, df = 1..30 (beyond: normal)
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.960


def metric_of(losses: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
    """Primary metric = metric-weighted mean per-domain validation loss; beside it the
    arithmetic-mean perplexity and the worst domain's loss over the scored domains."""
    scored = {d: w for d, w in weights.items() if w > 0}
    total = sum(scored.values())
    return {
        "mean_loss": sum(losses[d] * w for d, w in scored.items()) / total,
        "arith_ppl": float(np.mean([math.exp(losses[d]) for d in scored])),
        "worst_loss": max(losses[d] for d in scored),
    }


def summary(values: list[float]) -> dict:
    """mean, s.d. (n-1) and the 95 % t-interval of the mean."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    sd = float(x.std(ddof=1)) if n > 1 else float("nan")
    half = t975(n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"n": n, "mean": float(x.mean()), "sd": sd, "ci95": [float(x.mean() - half), float(x.mean() + half)]}


def paired(a: list[float], b: list[float]) -> dict:
    """a - b per seed (same seed = same init and data order): mean, s.d., 95 % interval, and
    whether the interval excludes zero."""
    s = summary([x - y for x, y in zip(a, b)])
    lo, hi = s["ci95"]
    s["excludes_zero"] = bool(np.isfinite(lo) and (lo > 0 or hi < 0))
    return s


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """First evaluated step whose metric is <= ``target`` (None: never)."""
    for step, value in curve:
        if value <= target:
            return step
    return None
