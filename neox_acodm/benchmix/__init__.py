"""``neox-acodm bench-mix``: a benchmark that can tell mixers apart.

Scenarios are YAML files (built-in: ``scenarios/*.yml``); every mixer of a scenario is trained
from the same init and data order for each of its paired seeds, and the report gives mean ± s.d.
and paired 95 % intervals of the primary metric against the baselines and the noise control.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def bench(scenario: str, out: Path, size: str = "cpu", cache: Path | None = None,
          seeds: tuple[int, ...] | None = None, mixers: tuple[str, ...] | None = None,
          progress: bool = True) -> dict:
    """Run one scenario and write report.json, plots and summary.md into ``out``."""
    import warnings

    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    from ..demo import default_cache
    from .report import write_report
    from .run import run_scenario
    from .scenario import load_scenario

    sc = load_scenario(scenario)
    rep = run_scenario(sc, size, Path(out), Path(cache) if cache else default_cache(), seeds, mixers, progress)
    return write_report(rep, Path(out))


def _cmd(args: argparse.Namespace) -> int:
    from ..config import ConfigError

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
        bench(args.scenario, Path(args.out), size, Path(args.cache) if args.cache else None, seeds, mixers,
              progress=not args.no_progress)
    except (ConfigError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    sys.stdout.write((Path(args.out) / "summary.md").read_text())
    return 0


def register(sub) -> None:
    from .scenario import builtin_scenarios

    p = sub.add_parser(
        "bench-mix", help="compare mixers on a scenario with paired seeds and intervals",
        description="Train every mixer of a scenario for each paired seed and report mean ± s.d. and "
                    "paired 95%% intervals. Example: neox-acodm bench-mix --scenario noisy --out bench_noisy",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default=None,
                   help=f"built-in ({', '.join(sorted(builtin_scenarios()))}) or a scenario YAML file")
    p.add_argument("--out", default=None, help="output directory (report.json, *.png, summary.md); "
                   "with --combine, the markdown file to write")
    p.add_argument("--size", default="cpu", help="size preset of the scenario (cpu, gpu, demo, quick)")
    p.add_argument("--quick", action="store_true", help="the `quick` size (about 2 minutes; the tests use it)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the scenario's)")
    p.add_argument("--mixers", default=None, help="comma-separated mixers (default: the scenario's)")
    p.add_argument("--cache", default=None, help="corpus/tokenizer cache directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--combine", nargs="+", metavar="DIR", default=None,
                   help="print one markdown table across the report.json of these output directories")
    p.set_defaults(func=_cmd)
