"""``neox-acodm demo``: the embedded demo, one discriminating ``bench-mix`` scenario on real
multi-domain text, on CPU. See :func:`run_demo` for what runs and the README for results."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def default_cache() -> Path:
    return Path(os.environ.get("NEOX_ACODM_CACHE", Path.home() / ".cache" / "neox_acodm"))


#: the demo = bench-mix on the scenario that discriminates, at a size that fits ~10 min on 2 cores
DEMO_SCENARIO = "noisy"
DEMO_MIXERS = ("static_natural", "uniform", "odm", "gram_softmax", "acodm", "acodm_control")


def run_demo(out: Path, quick: bool = False, cache: Path | None = None,
             seeds: tuple[int, ...] | None = None) -> dict:
    """``neox-acodm demo``: the ``noisy`` scenario (a 40 % noise domain excluded from the
    metric) with static natural, uniform, ODM, the Gram closed form, AC-ODM (preset aligned)
    and AC-ODM's no-learning noise control, 3 paired seeds. Writes what ``bench-mix`` writes."""
    from ..benchmix import bench

    return bench(DEMO_SCENARIO, Path(out), "quick" if quick else "demo", cache, seeds, DEMO_MIXERS)


def _demo_cmd(args: argparse.Namespace) -> int:
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    run_demo(Path(args.out), quick=args.quick, cache=Path(args.cache) if args.cache else None, seeds=seeds)
    print((Path(args.out) / "summary.md").read_text())
    return 0


def _corpus_cmd(args: argparse.Namespace) -> int:
    from .corpus import build_corpus

    m = build_corpus(Path(args.out), cap_mb=args.cap_mb)
    for d, info in m["domains"].items():
        print(f"{d:<12} train {info['train']['docs']:>5} docs {info['train']['bytes'] / 2**20:6.2f} MB   "
              f"valid {info['valid']['docs']:>4} docs   {info['source']}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="the noisy bench-mix scenario: 6 mixers x 3 paired seeds (CPU, ~10 min)",
        description="Example: neox-acodm demo --out demo_out (then read demo_out/summary.md)")
    p.add_argument("--out", required=True, help="output directory (report.json, plots, summary.md)")
    p.add_argument("--quick", action="store_true", help="tiny settings (~1 min), for tests")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--cache", default=None, help=f"corpus/tokenizer cache (default {default_cache()})")
    p.set_defaults(func=_demo_cmd)
    c = sub.add_parser("build-corpus", help="build the offline multi-domain corpus",
                       description="Example: neox-acodm build-corpus --out corpus --cap-mb 4")
    c.add_argument("--out", required=True)
    c.add_argument("--cap-mb", type=float, default=4.0, help="MB of text per domain")
    c.set_defaults(func=_corpus_cmd)
