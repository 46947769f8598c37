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
from .aggregate import aggregate
from .corpus import default_cache
from .data import build_domains
from .mixers import ANNEAL_SHARE, ANNEAL_START, MIXERS, ORACLE, ORACLE_ANNEAL, PROXY_MIXERS
from .oracle import candidate_mixes, sweep
from .report import write_report
from .scenario import Scenario, Size, load_scenario, size_of
from .stats import metric_of
from .train import TrainSpec, train_run

logger = logging.getLogger(__name__)


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


def _block(sc: Scenario, size: Size, mixer: str, seed: int, proxy: tuple[str, str] | None = None, weights=None) -> dict:
    """The full ``acodm:`` block of one run (``weights``: the domains' static mix, for the oracle)."""
    spec = copy.deepcopy(MIXERS[mixer](size.train.steps))
    domains = [{"name": d.name, "metric_weight": d.metric_weight} for d in sc.domains]
    if weights is not None:  # a zero share (e.g. the metric mix of a metric-0 domain) is the weight floor
        domains = [{**d, "weight": max(float(w), sc.min_weight, 1e-12)} for d, w in zip(domains, weights)]
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
    torch.set_num_threads(
        min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    )
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
    weights = {d.name: d.metric_weight for d in sc.domains}

    def train_one(name, block, spec, seed, bar=None) -> dict:
        ts = TrainSpec(tr.steps, tr.micro_batch, tr.grad_accum, tr.lr, tr.warmup, evals, seed)
        logger.debug("bench-mix: %s seed %d", name, seed)
        r = train_run(name, parse_config(block), spec, ts, train, valid, progress=bar)
        r["curve"] = [(p["step"], metric_of(p["loss"], weights)["mean_loss"]) for p in r["val_curve"]]
        r["final"] = metric_of(r["val_curve"][-1]["loss"], weights)
        r["block"] = block
        return r

    oracle = None
    if ORACLE_ANNEAL in mixers and ORACLE not in mixers:
        raise ValueError(f"{ORACLE_ANNEAL} starts from the oracle static mix: run it with {ORACLE}")
    if ORACLE in mixers:  # the sweep runs first, on its own seeds
        oracle = _oracle(sc, size, seeds, train, lambda n, b, s: train_one(n, b, model, s))
    jobs = []  # (seed, run name, block, model)
    for seed in seeds:
        for m in mixers:
            if m == ORACLE:
                jobs.append((seed, m, _block(sc, size, m, seed, weights=oracle["weights"]), model))
            elif m == ORACLE_ANNEAL:
                block = _block(sc, size, m, seed, weights=oracle["weights"])
                jobs.append((seed, m, {**block, "schedule_path": _anneal_schedule(sc, size, oracle, out)}, model))
            elif m in PROXY_MIXERS:
                policy = str(out / f"proxy_policy_seed{seed}.pt")
                jobs.append((seed, f"{m}_source", _block(sc, size, m, seed, ("source", policy)), proxy_model))
                jobs.append((seed, m, _block(sc, size, m, seed, ("target", policy)), model))
            else:
                jobs.append((seed, m, _block(sc, size, m, seed), model))
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
        runs.setdefault(name, {})[seed] = train_one(name, block, spec, seed, bar)
    if bar is not None:
        bar.close()
    return aggregate(sc, size_name, size, seeds, mixers, runs, data_info, time.perf_counter() - t_start, oracle)


def _anneal_schedule(sc: Scenario, size: Size, oracle: dict, out: Path) -> str:
    """The headroom probe's schedule: the oracle mix, then ``ANNEAL_SHARE`` of it moved to the
    metric weights from ``ANNEAL_START`` of the run (floored at the scenario's min_weight)."""
    from neox_acodm.schedule import Schedule

    def floored(w):
        w = np.maximum(np.asarray(w, dtype=np.float64) / np.sum(w), sc.min_weight)
        return tuple(float(x) for x in w / w.sum())

    base = floored(oracle["weights"])
    metric = floored([d.metric_weight for d in sc.domains])
    late = floored((1 - ANNEAL_SHARE) * np.array(base) + ANNEAL_SHARE * np.array(metric))
    start = max(1, round(size.train.steps * ANNEAL_START))
    path = out / f"{ORACLE_ANNEAL}_schedule.yml"
    Schedule(tuple(d.name for d in sc.domains), (0, start), (base, late)).save(path)
    return str(path)


def _oracle(sc: Scenario, size: Size, seeds, train, train_one) -> dict:
    """The sweep of static mixes on ``sc.oracle_seeds`` (disjoint from the reporting seeds)."""
    if set(sc.oracle_seeds) & set(seeds):
        raise ValueError(
            f"oracle seeds {list(sc.oracle_seeds)} overlap the reporting seeds {list(seeds)}; the "
            f"oracle must be chosen on seeds that are not reported"
        )
    tokens = np.array([len(d.tokens) for d in train], dtype=np.float64)
    metric = np.array([d.metric_weight for d in sc.domains], dtype=np.float64)
    named = {"natural": tokens, "uniform": np.ones(len(train)), "metric": metric, "temperature": tokens**0.5}
    cands = candidate_mixes(named, len(train), sc.oracle_draws, sc.oracle_seeds[0])

    def score(w, seed):
        r = train_one(f"oracle sweep {len(scores_done)}", _block(sc, size, ORACLE, seed, weights=w), seed)
        scores_done.append(r["final"]["mean_loss"])
        return r["final"]["mean_loss"]

    scores_done: list[float] = []
    best, scores = sweep(cands, sc.oracle_seeds, score)
    logger.info(
        "bench-mix oracle static: %s %s (mean %.4f over seeds %s)",
        best,
        np.round(cands[best], 3).tolist(),
        float(np.mean(scores[best])),
        list(sc.oracle_seeds),
    )
    return {
        "seeds": list(sc.oracle_seeds),
        "chosen": best,
        "weights": cands[best],
        "candidates": {n: {"weights": cands[n], "scores": scores[n]} for n in cands},
    }
