"""``neox-acodm export-schedule``: a run's realised weights as a replayable schedule.

Two sources: a ``bench-mix``/demo ``report.json`` (``--report``, one mixer and seed), or the
``acodm/weight/<domain>`` scalars of any run's TensorBoard event files (``--run``, GPT-NeoX or
Megatron-LM; the value logged at step s is the weights step s was planned with).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from neox_acodm.schedule import Schedule, from_weights

from .args import UsageError, existing_dir, existing_file, new_file, nonneg_int, positive_int

__all__ = ["history_from_run", "register"]


def history_from_run(run_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """(domains, [T, K] weights of steps 0..T-1) from a run's ``acodm/weight/*`` scalars.

    A step between two logged steps (``log_interval`` > 1) keeps the weights last logged; the
    steps before the first logged one take its weights (the weights of step 0 are not logged)."""
    from .report.events import read_run

    run = read_run(run_dir)
    domains = run.domains
    family = run.family("weight")
    if not domains:
        raise ValueError(f"{run_dir}: no acodm/weight/<domain> scalars (was the run logging acodm/*?)")
    steps = sorted(set.intersection(*(set(family[d].steps.tolist()) for d in domains)))
    if not steps:
        raise ValueError(f"{run_dir}: the weight series of the domains share no logged step")
    rows = np.array(
        [[float(family[d].values[np.searchsorted(family[d].steps, s)]) for d in domains] for s in steps],
        dtype=np.float64,
    )
    if not np.all(np.isfinite(rows)) or np.any(rows < 0) or np.any(rows.sum(1) <= 0):
        raise ValueError(f"{run_dir}: the logged weights hold non-finite or negative values")
    rows /= rows.sum(1, keepdims=True)  # TensorBoard stores float32: renormalise in float64
    index = np.searchsorted(steps, np.arange(steps[-1] + 1), side="right") - 1
    return domains, rows[np.maximum(index, 0)]


def _history_from_report(path: str, mixer: str, seed: int) -> tuple[list[str], list]:
    f = existing_file(path, "--report")
    try:
        report = json.loads(f.read_text(encoding="utf-8"))
        run = report["runs"][mixer][str(seed)]
        domains, curve = report["domains"], run["weights_curve"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: no weights for mixer {mixer!r} seed {seed} ({type(e).__name__}: {e})") from None
    if not isinstance(domains, list) or not isinstance(curve, list) or len(curve) < 2:
        raise UsageError(f"{path}: no weights for mixer {mixer!r} seed {seed} (domains/weights_curve malformed)")
    return domains, curve[:-1]  # row t = the weights of step t


def _cmd(args: argparse.Namespace) -> int:
    if (args.run is None) == (args.report is None):
        raise UsageError("export-schedule needs exactly one of --run DIR and --report FILE")
    if args.report is not None and (args.mixer is None or args.seed is None):
        raise UsageError("export-schedule --report needs --mixer and --seed")
    out = new_file(args.out)
    if args.run is not None:
        existing_dir(args.run, "--run")
        try:
            domains, history = history_from_run(args.run)
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"{args.run}: no weights to export ({e})") from None
    else:
        domains, history = _history_from_report(args.report, args.mixer, args.seed)
    try:
        sched: Schedule = from_weights(domains, history, every=args.every)
        sched.save(out)  # validated as replay would read it, then written atomically
    except (ValueError, TypeError) as e:
        source = args.run if args.run is not None else args.report
        raise UsageError(f"{source}: these weights cannot become a schedule: {e}") from None
    sys.stderr.write(
        f"wrote {out}: {len(sched.starts)} phases over {len(history)} steps; replay with "
        f"`mixer: static` and `schedule_path: {out}`\n"
    )
    if args.megatron:
        for start, blend in zip(sched.starts, sched.megatron_blends()):
            sys.stdout.write(f"{start}\t--data-path {blend}\n")
    return 0


def register(sub) -> None:
    e = sub.add_parser(
        "export-schedule",
        help="write a run's realised weights as a replayable schedule",
        description="Example: neox-acodm export-schedule --run tensorboard/my_run --out "
        "acodm.schedule.yml --every 1000; or: neox-acodm export-schedule --report "
        "bench/report.json --mixer acodm --seed 1 --out acodm.schedule.yml --every 20",
    )
    e.add_argument("--run", default=None, help="a run's TensorBoard directory (its acodm/weight/* scalars)")
    e.add_argument("--report", default=None, help="a bench-mix/demo report.json")
    e.add_argument("--mixer", default=None, help="with --report: the mixer")
    e.add_argument("--seed", type=nonneg_int, default=None, help="with --report: the seed")
    e.add_argument("--out", required=True, help="schedule YAML to write")
    e.add_argument("--every", type=positive_int, default=1, help="average over blocks of N steps (coarser phases)")
    e.add_argument("--megatron", action="store_true", help="also print one --data-path blend per phase")
    e.set_defaults(func=_cmd)
