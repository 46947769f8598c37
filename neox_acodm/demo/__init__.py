"""``neox-acodm demo``: AC-ODM vs ODM vs static mixing (plus proxy transfer) on real
multi-domain text, on CPU. See :func:`run_demo` for what runs and the README for results."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def default_cache() -> Path:
    return Path(os.environ.get("NEOX_ACODM_CACHE", Path.home() / ".cache" / "neox_acodm"))


# (mode) -> settings. Defaults fit ~15 min on 2 CPU cores; --quick fits ~2 min.
MODES = {
    "full": dict(cap_mb=4.0, vocab=4096, layers=2, hidden=128, heads=4, seq_len=128, steps=600,
                 micro_batch=4, grad_accum=4, lr=2e-3, warmup=30, eval_every=50, eval_windows=48,
                 agent_warmup=60, proxy_hidden=64, proxy_heads=2),
    "quick": dict(cap_mb=0.5, vocab=1024, layers=2, hidden=64, heads=2, seq_len=64, steps=40,
                  micro_batch=4, grad_accum=2, lr=3e-3, warmup=5, eval_every=10, eval_windows=8,
                  agent_warmup=8, proxy_hidden=32, proxy_heads=2),
}


def mixer_block(mixer: str, domains: list[str], s: dict, seed: int, proxy_role: str = "none",
                policy_path: str | None = None) -> dict:
    """The ``acodm:`` block each demo run uses (same keys a NeoX YAML would carry)."""
    return {
        "mixer": mixer, "seed": seed, "total_steps": s["steps"],
        "domains": [{"name": d} for d in domains],
        "initial_weights": "tokens",  # static = natural token proportions; others start there
        "sampling": {"min_weight": 0.01},
        "odm": {"variant": "paper", "smoothing": 0.9, "warmup_steps": s["agent_warmup"]},
        "agent": {"hidden_dim": 256, "num_layers": 3, "warmup_steps": s["agent_warmup"], "batch_size": 32,
                  "buffer_size": 10000, "actor_lr": 3e-4, "critic_lr": 1e-3, "tau": 0.01, "gamma": 0.9,
                  "exploration_std": 0.01, "warmup_noise_std": 0.02, "device": "cpu"},
        "reward": {"params": {"module": "mlp_out", "layers": "all"}, "estimator": "exact"},
        "state": {"norm_params": {"module": "mlp_out", "layers": "all"}},
        "proxy": {"role": proxy_role, "policy_path": policy_path},
    }


def run_demo(out: Path, quick: bool = False, cache: Path | None = None, seed: int = 1234,
             mixers: tuple[str, ...] = ("static", "odm", "acodm", "acodm_proxy"), steps: int | None = None) -> dict:
    import torch

    from ..config import parse_config
    from .corpus import build_corpus
    from .data import build_indexed, load_domain, train_tokenizer
    from .report import plot, steps_to_reach, summary_markdown, write_json
    from .train import ModelSpec, TrainSpec, train_run

    t_start = time.perf_counter()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    mode = "quick" if quick else "full"
    s = dict(MODES[mode])
    if steps is not None:
        s.update(steps=steps, eval_every=max(1, min(s["eval_every"], steps // 4)))
    cache = cache or default_cache()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus_dir = cache / f"corpus_{s['cap_mb']}mb"
    manifest = build_corpus(corpus_dir, cap_mb=s["cap_mb"])
    domains = list(manifest["domains"])
    tok = train_tokenizer(corpus_dir, manifest, s["vocab"], cache / "tokenizers")
    prefixes = build_indexed(corpus_dir, manifest, tok, corpus_dir / f"indexed_{tok.stem}")
    train = [load_domain(prefixes[f"{d}/train"], d, s["seq_len"]) for d in domains]
    valid = [load_domain(prefixes[f"{d}/valid"], d, s["seq_len"]) for d in domains]
    corpus_info = {d: {"train_tokens": int(len(t.tokens)), "val_tokens": int(len(v.tokens)),
                       "source": manifest["domains"][d]["source"]} for d, t, v in zip(domains, train, valid)}
    model = ModelSpec(s["layers"], s["hidden"], s["heads"], s["vocab"], s["seq_len"])
    proxy_model = dataclasses.replace(model, hidden=s["proxy_hidden"], heads=s["proxy_heads"])
    tspec = TrainSpec(s["steps"], s["micro_batch"], s["grad_accum"], s["lr"], s["warmup"], s["eval_every"],
                      s["eval_windows"], seed)
    policy = str(out / "proxy_policy.pt")

    runs = []  # (name, cfg, model)
    if "acodm_proxy" in mixers:
        runs.append(("acodm_proxy_source", mixer_block("acodm", domains, s, seed, "source", policy), proxy_model))
    for m in mixers:
        if m == "acodm_proxy":
            runs.append((m, mixer_block("acodm", domains, s, seed, "target", policy), model))
        else:
            runs.append((m, mixer_block(m, domains, s, seed), model))
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(runs) * s["steps"], desc="demo", unit="step", dynamic_ncols=True)
    except ImportError:
        bar = None
    results = {}
    for name, block, spec in runs:
        logger.info("demo: training %s (%s)", name, spec)
        results[name] = train_run(name, parse_config(block), spec, tspec, train, valid, progress=bar)
    if bar is not None:
        bar.close()
    source = results.pop("acodm_proxy_source", None)
    static_final = results["static"]["final_val_ppl"]["avg"] if "static" in results else None
    for r in results.values():
        r["steps_to_static_final"] = steps_to_reach(r["val_curve"], static_final) if static_final else None
    report = {
        "mixers": results, "domains": domains, "corpus": corpus_info,
        "proxy_source": {"model": dataclasses.asdict(proxy_model),
                         "final_val_ppl": source["final_val_ppl"]} if source else None,
        "settings": {"mode": mode, "seed": seed, "model": dataclasses.asdict(model), **s,
                     "tokens_per_step": s["micro_batch"] * s["grad_accum"] * s["seq_len"],
                     "tokenizer": tok.name, "threads": torch.get_num_threads()},
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_json(out / "report.json", report)
    report["plots"] = plot(report, out)
    (out / "summary.md").write_text(summary_markdown(report))
    write_json(out / "report.json", report)
    logger.info("demo: wrote %s (report.json, summary.md, %s) in %.0f s", out, ", ".join(report["plots"]),
                report["wall_seconds"])
    return report


def _demo_cmd(args: argparse.Namespace) -> int:
    report = run_demo(Path(args.out), quick=args.quick, cache=Path(args.cache) if args.cache else None,
                      seed=args.seed, steps=args.steps)
    print((Path(args.out) / "summary.md").read_text())
    return 0 if report else 1


def _corpus_cmd(args: argparse.Namespace) -> int:
    from .corpus import build_corpus

    m = build_corpus(Path(args.out), cap_mb=args.cap_mb)
    for d, info in m["domains"].items():
        print(f"{d:<12} train {info['train']['docs']:>5} docs {info['train']['bytes'] / 2**20:6.2f} MB   "
              f"valid {info['valid']['docs']:>4} docs   {info['source']}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="AC-ODM vs ODM vs static on real multi-domain text (CPU)")
    p.add_argument("--out", required=True, help="output directory (report.json, plots, summary.md)")
    p.add_argument("--quick", action="store_true", help="tiny settings (~2 min), for tests")
    p.add_argument("--steps", type=int, default=None, help="override the number of steps")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--cache", default=None, help=f"corpus/tokenizer cache (default {default_cache()})")
    p.set_defaults(func=_demo_cmd)
    c = sub.add_parser("build-corpus", help="build the offline multi-domain corpus")
    c.add_argument("--out", required=True)
    c.add_argument("--cap-mb", type=float, default=4.0, help="MB of text per domain")
    c.set_defaults(func=_corpus_cmd)
