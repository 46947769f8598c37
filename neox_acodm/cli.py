"""The ``neox-acodm`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ._logging import setup_cli_logging
from .config import ConfigError, config_reference, load_config

logger = logging.getLogger("neox_acodm.cli")


def _check_config(args: argparse.Namespace) -> int:
    if args.reference:
        sys.stdout.write(config_reference() + "\n")
        return 0
    if not args.file:
        sys.stderr.write("neox-acodm check-config: give a YAML file (or --reference)\n")
        return 2
    try:
        cfg = load_config(args.file)
    except (ConfigError, FileNotFoundError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except Exception as e:  # noqa: BLE001 - never a traceback for a user's file
        logger.debug("check-config failed", exc_info=True)
        sys.stderr.write(f"error: {args.file}: cannot be read as an acodm config "
                         f"({type(e).__name__}: {str(e)[:200]})\n")
        return 2
    sys.stdout.write(json.dumps(cfg.to_dict(), indent=2) + "\n")
    sys.stderr.write(f"ok: {cfg.num_domains} domains, mixer={cfg.mixer}\n")
    return 0


def _export_schedule(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .schedule import from_weights

    try:
        report = json.loads(Path(args.report).read_text())
        run = report["runs"][args.mixer][str(args.seed)]
        history = run["weights_curve"][:-1]  # row t = the weights of step t
    except (OSError, ValueError, KeyError) as e:
        sys.stderr.write(f"error: {args.report}: no weights for mixer {args.mixer!r} seed {args.seed} "
                         f"({type(e).__name__}: {e})\n")
        return 2
    sched = from_weights(report["domains"], history, every=args.every)
    sched.save(args.out)
    sys.stderr.write(f"wrote {args.out}: {len(sched.starts)} phases over {len(history)} steps; replay with "
                     f"`mixer: static` and `schedule_path: {args.out}`\n")
    if args.megatron:
        for start, blend in zip(sched.starts, sched.megatron_blends()):
            sys.stdout.write(f"{start}\t--data-path {blend}\n")
    return 0


PTH_NAME = "neox_acodm.pth"
PTH_LINE = "import neox_acodm._bootstrap\n"


def _install_hook(args: argparse.Namespace) -> int:
    import sysconfig
    from pathlib import Path

    site = Path(args.site or sysconfig.get_paths()["purelib"])
    pth = site / PTH_NAME
    if args.remove:
        if pth.exists():
            pth.unlink()
        sys.stderr.write(f"removed {pth}\n")
        return 0
    pth.write_text(PTH_LINE)
    sys.stderr.write(f"wrote {pth}: every Python of this environment (deepy.py and each launched rank) "
                     f"now activates neox_acodm's lazy GPT-NeoX hook; NEOX_ACODM_DISABLE=1 turns it off\n")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("neox_acodm")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neox-acodm", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"neox-acodm {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check-config", help="validate an acodm block and print the resolved config",
                       description="Example: neox-acodm check-config configs/acodm/pythia-410m.yml")
    c.add_argument("file", nargs="?", help="a NeoX YAML with an `acodm:` block, or the block itself")
    c.add_argument("--reference", action="store_true", help="print the config reference (markdown)")
    c.set_defaults(func=_check_config)

    h = sub.add_parser("install-hook", help="install (or --remove) the .pth start-up hook for GPT-NeoX",
                       description="Example: neox-acodm install-hook   (once per environment that runs NeoX)")
    h.add_argument("--remove", action="store_true")
    h.add_argument("--site", default=None, help="site-packages directory (default: this environment's)")
    h.set_defaults(func=_install_hook)

    e = sub.add_parser("export-schedule", help="write a run's realised weights as a replayable schedule",
                       description="Example: neox-acodm export-schedule --report bench/report.json --mixer acodm "
                                   "--seed 1 --out acodm.schedule.yml --every 20")
    e.add_argument("--report", required=True, help="a bench-mix/demo report.json")
    e.add_argument("--mixer", required=True)
    e.add_argument("--seed", type=int, required=True)
    e.add_argument("--out", required=True, help="schedule YAML to write")
    e.add_argument("--every", type=int, default=1, help="average over blocks of N steps (coarser phases)")
    e.add_argument("--megatron", action="store_true", help="also print one --data-path blend per phase")
    e.set_defaults(func=_export_schedule)

    for register in _subcommand_registrars():
        register(sub)
    return p


def _subcommand_registrars():
    """Subcommands defined next to their implementation."""
    from . import bench, benchmix, demo, report

    return [bench.register, benchmix.register, demo.register, report.register]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_cli_logging(logging.DEBUG if args.verbose else logging.INFO)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
