"""The ``bench-mix``, ``demo`` and ``build-corpus`` subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neox_acodm.checkpoint import atomic_write

from ..args import UsageError, comma_ints, comma_names, existing_file, new_file, out_dir, positive_float
from .corpus import default_cache
from .mixers import MIXERS
from .scenario import builtin_scenarios

BENCH_SCHEMA = "neox_acodm.bench-mix/1"

__all__ = ["register"]


def _combine(dirs: list[str], out: str | None) -> int:
    import json

    from .report import combined_markdown

    target = new_file(out) if out else None
    reports = []
    for d in dirs:
        f = existing_file(str(Path(d) / "report.json"), "--combine")
        try:
            rep = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise UsageError(f"--combine {f}: not a readable JSON report ({e})") from None
        if not isinstance(rep, dict) or rep.get("schema") != BENCH_SCHEMA:
            raise UsageError(f"--combine {f}: not a bench-mix report (schema {BENCH_SCHEMA})")
        reports.append(rep)
    try:
        text = combined_markdown(reports) + "\n"
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise UsageError(f"--combine: a report lacks what the table needs ({type(e).__name__}: {e})") from None
    if target is not None:
        atomic_write(target, text.encode())
    sys.stdout.write(text)
    return 0


def _bench_cmd(args: argparse.Namespace) -> int:
    from .run import bench
    from .scenario import load_scenario, size_of

    if args.combine:
        return _combine(args.combine, args.out)
    if not args.scenario or not args.out:
        raise UsageError("bench-mix needs --scenario and --out (or --combine DIR...)")
    out = out_dir(args.out)
    size = "quick" if args.quick else args.size
    sc = load_scenario(args.scenario)  # a bad file, size or mixer fails here, before anything runs
    size_of(sc, size)
    unknown = [m for m in args.mixers or () if m not in MIXERS]
    if unknown:
        raise UsageError(f"--mixers: unknown {unknown} (known: {', '.join(MIXERS)})")
    if args.cache:
        out_dir(args.cache, "--cache")
    bench(
        args.scenario,
        out,
        size,
        Path(args.cache) if args.cache else None,
        args.seeds,
        args.mixers,
        progress=not args.no_progress,
    )
    sys.stdout.write((out / "summary.md").read_text())
    return 0


def _demo_cmd(args: argparse.Namespace) -> int:
    from .demo import run_demo

    out = out_dir(args.out)
    if args.cache:
        out_dir(args.cache, "--cache")
    run_demo(out, quick=args.quick, cache=Path(args.cache) if args.cache else None, seeds=args.seeds)
    sys.stdout.write((out / "summary.md").read_text() + "\n")
    return 0


def _corpus_cmd(args: argparse.Namespace) -> int:
    from .corpus import build_corpus

    m = build_corpus(out_dir(args.out), cap_mb=args.cap_mb)
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
    p.add_argument("--seeds", type=comma_ints, default=None, help="comma-separated seeds (default: the scenario's)")
    p.add_argument("--mixers", type=comma_names, default=None, help="comma-separated mixers (default: the scenario's)")
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
    d.add_argument("--seeds", type=comma_ints, default=None, help="comma-separated seeds (default 1,2,3)")
    d.add_argument("--cache", default=None, help=f"corpus/tokenizer cache (default {default_cache()})")
    d.set_defaults(func=_demo_cmd)

    c = sub.add_parser(
        "build-corpus",
        help="build the offline multi-domain corpus",
        description="Example: neox-acodm build-corpus --out corpus --cap-mb 4",
    )
    c.add_argument("--out", required=True)
    c.add_argument("--cap-mb", type=positive_float, default=4.0, help="MB of text per domain")
    c.set_defaults(func=_corpus_cmd)
