"""Aggregation of one ``bench-mix`` scenario's runs into its report (schema ``neox_acodm.bench-mix/1``)."""

from __future__ import annotations

import numpy as np
import torch

from .mixers import DESCRIPTIONS, ORACLE, PRIOR_STATICS
from .scenario import to_dict
from .stats import paired, steps_to_reach, summary

__all__ = ["BASELINES", "aggregate", "floor_occupancy"]

BASELINES = ("static_natural", "uniform", "gram_softmax", "odm")


def floor_occupancy(weights_curves, metric_weights, min_weight: float, names) -> dict:
    """Of the domains scored by the metric, the one most often at the weight floor: the share of
    steps (mean over seeds) its weight sits within 1 % of ``min_weight``.

    ``weights_curves``: per seed, [T, K] weights of every step."""
    scored = [i for i, m in enumerate(metric_weights) if m > 0]
    at = np.mean([np.mean(np.asarray(w)[:, scored] <= min_weight * 1.01 + 1e-12, axis=0) for w in weights_curves], 0)
    i = int(np.argmax(at))
    return {"domain": names[scored[i]], "share": float(at[i])}


def aggregate(sc, size_name, size, seeds, mixers, runs, data_info, wall, oracle=None) -> dict:
    """The report of one scenario from its runs: per mixer, the metric's mean ± s.d. and paired
    intervals against the baselines, its regret (vs the oracle static mix) and its difference to
    the best prior-information static mix (the better of uniform, metric-weighted, temperature)."""
    names = [m for m in mixers if m in runs]
    priors = [m for m in PRIOR_STATICS if m in runs]
    best_prior = (
        min(priors, key=lambda m: np.mean([runs[m][s]["final"]["mean_loss"] for s in seeds])) if priors else None
    )
    table = {}
    for m in names:
        finals = {k: [runs[m][s]["final"][k] for s in seeds] for k in ("mean_loss", "arith_ppl", "worst_loss")}
        row = {k: summary(v) for k, v in finals.items()}
        row["per_seed"] = {str(s): runs[m][s]["final"] for s in seeds}
        for b in BASELINES:
            if b in runs and b != m:
                row[f"vs_{b}"] = paired(finals["mean_loss"], [runs[b][s]["final"]["mean_loss"] for s in seeds])
        if "static_natural" in runs:
            reach = [
                steps_to_reach(runs[m][s]["curve"], runs["static_natural"][s]["final"]["mean_loss"]) for s in seeds
            ]
            row["steps_to_static_final"] = reach
            row["steps_fraction"] = None if any(r is None for r in reach) else float(np.mean(reach)) / size.train.steps
        row["reward_time_share"] = float(np.mean([runs[m][s]["reward_time_share"] for s in seeds]))
        row["final_weights"] = np.mean([runs[m][s]["weights_curve"][-1] for s in seeds], axis=0).tolist()
        row["floor"] = floor_occupancy(
            [runs[m][s]["weights_curve"] for s in seeds],
            [d.metric_weight for d in sc.domains],
            sc.min_weight,
            [d.name for d in sc.domains],
        )
        row["mean_weights"] = np.mean([np.mean(runs[m][s]["weights_curve"], axis=0) for s in seeds], axis=0).tolist()
        for key, ref in (("vs_oracle_static", ORACLE), ("vs_best_prior", best_prior)):
            if ref is not None and ref in runs and ref != m:
                row[key] = paired(finals["mean_loss"], [runs[ref][s]["final"]["mean_loss"] for s in seeds])
        row["description"] = DESCRIPTIONS.get(m, m)
        control = "acodm_control" if m == "acodm" else None
        if control and control in runs:
            row["vs_acodm_control"] = paired(
                finals["mean_loss"], [runs[control][s]["final"]["mean_loss"] for s in seeds]
            )
        table[m] = row
    return {
        "schema": "neox_acodm.bench-mix/1",
        "scenario": to_dict(sc),
        "size": size_name,
        "size_settings": to_dict(size),
        "seeds": list(seeds),
        "mixers": names,
        "domains": [d.name for d in sc.domains],
        "data": data_info,
        "table": table,
        "best_prior_static": best_prior,
        "oracle": oracle,
        "runs": {
            m: {str(s): {k: v for k, v in r.items() if k != "block"} | {"block": r["block"]} for s, r in per.items()}
            for m, per in runs.items()
        },
        "threads": torch.get_num_threads(),
        "wall_seconds": wall,
    }
