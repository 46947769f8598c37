"""The ``bench-mix``, ``demo`` and ``build-corpus`` subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .corpus import default_cache
from .scenario import builtin_scenarios

__all__ = ["register"]


def _bench_cmd(args: argparse.Namespace) -> int:
    from neox_acodm.typed_yaml import ConfigError

    from .run import bench

    if args.combine:
        import json

        from .report import combined_markdown

        reports = [json.loads((Path(d) / "report.json").read_text()) for d in args.combine]
        text = combined_markdown(reports) + "\n"
        Path(args.out).write_text(text) if args.out else None
        sys.stdout.write(text)
        return 0
    if not args.scenario or not args.out:
        sys.stderr.write("error: bench-mix needs --scenario and --out (or --combine DIR...)\n")
        return 2

    size = "quick" if args.quick else args.size
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    mixers = tuple(args.mixers.split(",")) if args.mixers else None
    try:
        bench(
            args.scenario,
            Path(args.out),
            size,
            Path(args.cache) if args.cache else None,
            seeds,
            mixers,
            progress=not args.no_progress,
        )
    except (ConfigError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    sys.stdout.write((Path(args.out) / "summary.md").read_text())
    return 0


def _demo_cmd(args: argparse.Namespace) -> int:
    from .demo import run_demo

    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    run_demo(Path(args.out), quick=args.quick, cache=Path(args.cache) if args.cache else None, seeds=seeds)
    sys.stdout.write((Path(args.out) / "summary.md").read_text() + "\n")
    return 0


def _corpus_cmd(args: argparse.Namespace) -> int:
    from .corpus import build_corpus

    m = build_corpus(Path(args.out), cap_mb=args.cap_mb)
    for d, info in m["domains"].items():
        sys.stdout.write(
            f"{d:<12} train {info['train']['docs']:>5} docs {info['train']['bytes'] / 2**20:6.2f} MB   "
            f"valid {info['valid']['docs']:>4} docs   {info['source']}\n"
        )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "bench-mix",
        help="compare mixers on a scenario with paired seeds and intervals",
        description="Train every mixer of a scenario for each paired seed and report mean ± s.d. and "
        "paired 95%% intervals. Example: neox-acodm bench-mix --scenario noisy --out bench_noisy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenario", default=None, help=f"built-in ({', '.join(sorted(builtin_scenarios()))}) or a scenario YAML file"
    )
    p.add_argument(
        "--out",
        default=None,
        help="output directory (report.json, *.png, summary.md); with --combine, the markdown file to write",
    )
    p.add_argument("--size", default="cpu", help="size preset of the scenario (cpu, gpu, demo, quick)")
    p.add_argument("--quick", action="store_true", help="the `quick` size (about 2 minutes; the tests use it)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the scenario's)")
    p.add_argument("--mixers", default=None, help="comma-separated mixers (default: the scenario's)")
    p.add_argument("--cache", default=None, help="corpus/tokenizer cache directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--combine",
        nargs="+",
        metavar="DIR",
        default=None,
        help="print one markdown table across the report.json of these output directories",
    )
    p.set_defaults(func=_bench_cmd)

    d = sub.add_parser(
        "demo",
        help="the noisy bench-mix scenario: 6 mixers x 3 paired seeds (CPU, ~10 min)",
        description="Example: neox-acodm demo --out demo_out (then read demo_out/summary.md)",
    )
    d.add_argument("--out", required=True, help="output directory (report.json, plots, summary.md)")
    d.add_argument("--quick", action="store_true", help="tiny settings (~1 min), for tests")
    d.add_argument("--seeds", default=None, help="comma-separated seeds (default 1,2,3)")
    d.add_argument("--cache", default=None, help=f"corpus/tokenizer cache (default {default_cache()})")
    d.set_defaults(func=_demo_cmd)

    c = sub.add_parser(
        "build-corpus",
        help="build the offline multi-domain corpus",
        description="Example: neox-acodm build-corpus --out corpus --cap-mb 4",
    )
    c.add_argument("--out", required=True)
    c.add_argument("--cap-mb", type=float, default=4.0, help="MB of text per domain")
    c.set_defaults(func=_corpus_cmd)
