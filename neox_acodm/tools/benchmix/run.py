"""``bench-mix`` runner: every mixer x every seed of a scenario, paired by seed."""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from neox_acodm.config import parse_config

from ..model import ModelSpec
from .corpus import default_cache
from .data import build_domains
from .mixers import DESCRIPTIONS, MIXERS, PROXY_MIXERS
from .report import write_report
from .scenario import Scenario, Size, load_scenario, size_of, to_dict
from .stats import metric_of, paired, steps_to_reach, summary
from .train import TrainSpec, train_run

logger = logging.getLogger(__name__)

BASELINES = ("static_natural", "uniform", "gram_softmax", "odm")


def bench(
    scenario: str,
    out: Path,
    size: str = "cpu",
    cache: Path | None = None,
    seeds: tuple[int, ...] | None = None,
    mixers: tuple[str, ...] | None = None,
    progress: bool = True,
) -> dict:
    """Run one scenario and write report.json, plots and summary.md into ``out``."""
    import warnings

    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    sc = load_scenario(scenario)
    rep = run_scenario(sc, size, Path(out), Path(cache) if cache else default_cache(), seeds, mixers, progress)
    return write_report(rep, Path(out))


def _block(sc: Scenario, size: Size, mixer: str, seed: int, proxy: tuple[str, str] | None = None) -> dict:
    """The full ``acodm:`` block of one run."""
    spec = copy.deepcopy(MIXERS[mixer](size.train.steps))
    domains = [{"name": d.name, "metric_weight": d.metric_weight} for d in sc.domains]
    block = {"seed": seed, "total_steps": size.train.steps, "domains": domains, **spec}
    sampling = {"allocation": sc.allocation, "min_weight": sc.min_weight}
    block["sampling"] = {**sampling, **spec.get("sampling", {})}
    # tiny models: every layer's MLP output projection feeds the reward and the norm features
    block["reward"] = {"params": {"module": "mlp_out", "layers": "all"}, **spec.get("reward", {})}
    block["state"] = {"norm_params": {"module": "mlp_out", "layers": "all"}, **spec.get("state", {})}
    if proxy is not None:
        block["proxy"] = {"role": proxy[0], "policy_path": proxy[1]}
    return block


def _quiet() -> None:
    """Keep the progress bar readable: upstream chatter and our per-run INFO lines go below
    WARNING (``neox-acodm -v`` shows them)."""
    import warnings

    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    if logging.getLogger("neox_acodm").getEffectiveLevel() <= logging.DEBUG:
        return
    for name in (
        "megatron",
        "neox_acodm.runtime",
        "neox_acodm.capture",
        "neox_acodm.ops",
        "neox_acodm.mixers",
        "neox_acodm.tools.benchmix",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_scenario(
    sc: Scenario,
    size_name: str,
    out: Path,
    cache: Path,
    seeds: tuple[int, ...] | None = None,
    mixers: tuple[str, ...] | None = None,
    progress: bool = True,
) -> dict:
    """Train every (mixer, seed); returns the report (see ``report.write_report``)."""
    t_start = time.perf_counter()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    size = size_of(sc, size_name)
    seeds = tuple(seeds or sc.seeds)
    mixers = tuple(mixers or sc.mixers)
    unknown = [m for m in mixers if m not in MIXERS]
    if unknown:
        raise ValueError(f"unknown mixers {unknown} (known: {', '.join(MIXERS)})")
    out.mkdir(parents=True, exist_ok=True)
    _quiet()
    train, valid, data_info = build_domains(sc, size, cache)
    ms, tr = size.model, size.train
    model = ModelSpec(ms.layers, ms.hidden, ms.heads, size.vocab, ms.seq_len)
    proxy_model = ModelSpec(ms.layers, ms.proxy_hidden, max(1, ms.heads // 2), size.vocab, ms.seq_len)
    evals = tuple(sorted({max(1, round(tr.steps * (i + 1) / tr.eval_points)) for i in range(tr.eval_points)}))
    jobs = []  # (seed, run name, block, model)
    for seed in seeds:
        for m in mixers:
            if m in PROXY_MIXERS:
                policy = str(out / f"proxy_policy_seed{seed}.pt")
                jobs.append((seed, f"{m}_source", _block(sc, size, m, seed, ("source", policy)), proxy_model))
                jobs.append((seed, m, _block(sc, size, m, seed, ("target", policy)), model))
            else:
                jobs.append((seed, m, _block(sc, size, m, seed), model))
    weights = {d.name: d.metric_weight for d in sc.domains}
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(
                total=len(jobs) * tr.steps,
                desc=f"bench-mix {sc.name}",
                unit="step",
                dynamic_ncols=True,
                mininterval=2.0,
            )
        except ImportError:
            bar = None
    runs: dict[str, dict[int, dict]] = {}
    for seed, name, block, spec in jobs:
        cfg = parse_config(block)
        ts = TrainSpec(tr.steps, tr.micro_batch, tr.grad_accum, tr.lr, tr.warmup, evals, seed)
        logger.debug("bench-mix: %s seed %d", name, seed)
        r = train_run(name, cfg, spec, ts, train, valid, progress=bar)
        r["curve"] = [(p["step"], metric_of(p["loss"], weights)["mean_loss"]) for p in r["val_curve"]]
        r["final"] = metric_of(r["val_curve"][-1]["loss"], weights)
        r["block"] = block
        runs.setdefault(name, {})[seed] = r
    if bar is not None:
        bar.close()
    return _aggregate(sc, size_name, size, seeds, mixers, runs, data_info, time.perf_counter() - t_start)


def _aggregate(sc, size_name, size, seeds, mixers, runs, data_info, wall) -> dict:
    names = [m for m in mixers if m in runs]
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
        row["mean_weights"] = np.mean([np.mean(runs[m][s]["weights_curve"], axis=0) for s in seeds], axis=0).tolist()
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
        "runs": {
            m: {str(s): {k: v for k, v in r.items() if k != "block"} | {"block": r["block"]} for s, r in per.items()}
            for m, per in runs.items()
        },
        "threads": torch.get_num_threads(),
        "wall_seconds": wall,
    }
