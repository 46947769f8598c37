"""The ``neox-acodm`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from neox_acodm._logging import setup_cli_logging
from neox_acodm.config import ConfigError, config_reference, load_config

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
        sys.stderr.write(
            f"error: {args.file}: cannot be read as an acodm config ({type(e).__name__}: {str(e)[:200]})\n"
        )
        return 2
    sys.stdout.write(json.dumps(cfg.to_dict(), indent=2) + "\n")
    sys.stderr.write(f"ok: {cfg.num_domains} domains, mixer={cfg.mixer}\n")
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
    sys.stderr.write(
        f"wrote {pth}: every Python of this environment (deepy.py and each launched rank) "
        f"now activates neox_acodm's lazy GPT-NeoX hook; NEOX_ACODM_DISABLE=1 turns it off\n"
    )
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

    c = sub.add_parser(
        "check-config",
        help="validate an acodm block and print the resolved config",
        description="Example: neox-acodm check-config configs/acodm/pythia-410m.yml",
    )
    c.add_argument("file", nargs="?", help="a NeoX YAML with an `acodm:` block, or the block itself")
    c.add_argument("--reference", action="store_true", help="print the config reference (markdown)")
    c.set_defaults(func=_check_config)

    h = sub.add_parser(
        "install-hook",
        help="install (or --remove) the .pth start-up hook for GPT-NeoX",
        description="Example: neox-acodm install-hook   (once per environment that runs NeoX)",
    )
    h.add_argument("--remove", action="store_true")
    h.add_argument("--site", default=None, help="site-packages directory (default: this environment's)")
    h.set_defaults(func=_install_hook)

    for register in _subcommand_registrars():
        register(sub)
    return p


def _subcommand_registrars():
    """Subcommands defined next to their implementation."""
    from . import bench_reward, export, report
    from .benchmix import commands

    return [export.register, bench_reward.register, commands.register, report.register]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_cli_logging(logging.DEBUG if args.verbose else logging.INFO)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
