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
    sys.stdout.write(json.dumps(cfg.to_dict(), indent=2) + "\n")
    sys.stderr.write(f"ok: {cfg.num_domains} domains, mixer={cfg.mixer}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neox-acodm", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check-config", help="validate an acodm block and print the resolved config")
    c.add_argument("file", nargs="?", help="a NeoX YAML with an `acodm:` block, or the block itself")
    c.add_argument("--reference", action="store_true", help="print the config reference (markdown)")
    c.set_defaults(func=_check_config)

    for register in _subcommand_registrars():
        register(sub)
    return p


def _subcommand_registrars():
    """Subcommands defined next to their implementation."""
    from . import bench, demo

    return [bench.register, demo.register]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_cli_logging(logging.DEBUG if args.verbose else logging.INFO)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
