"""The ``neox-acodm`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from neox_acodm._logging import setup_cli_logging
from neox_acodm.checkpoint import CheckpointError
from neox_acodm.config import ConfigError, config_reference, load_config

from .args import UsageError, existing_file

logger = logging.getLogger("neox_acodm.cli")


def _check_config(args: argparse.Namespace) -> int:
    if args.reference:
        sys.stdout.write(config_reference() + "\n")
        return 0
    if not args.file:
        raise UsageError("check-config: give a YAML file (or --reference)")
    path = existing_file(args.file, "check-config")
    try:
        cfg = load_config(path)
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
#: a .pth line is executed at every interpreter start: it must stay silent when neox_acodm was
#: uninstalled without ``install-hook --remove`` (no traceback at every Python start)
PTH_LINE = (
    "import importlib.util as _u; _u.find_spec('neox_acodm') is not None "
    "and __import__('neox_acodm._bootstrap'); del _u\n"
)


def _install_hook(args: argparse.Namespace) -> int:
    import sysconfig
    from pathlib import Path

    site = Path(args.site or sysconfig.get_paths()["purelib"])
    if not site.is_dir():
        raise UsageError(f"--site {site}: no such directory; give this environment's site-packages")
    pth = site / PTH_NAME
    if args.remove:
        if not pth.exists():
            sys.stderr.write(f"nothing to remove: {pth} does not exist (the hook was not installed there)\n")
            return 0
        pth.unlink()
        sys.stderr.write(f"removed {pth}\n")
        return 0
    tmp = pth.with_name(PTH_NAME + ".tmp")
    tmp.write_text(PTH_LINE)
    tmp.replace(pth)
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


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the flag and the fix), not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="neox-acodm", description=__doc__)
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
    from . import bench_data_cmd, bench_reward_cmd, export, report
    from .benchmix import commands

    return [export.register, bench_reward_cmd.register, bench_data_cmd.register, commands.register, report.register]


def main(argv: list[str] | None = None) -> int:
    """Every subcommand under one discipline: a bad input is ``error: ...`` (one to three lines)
    and exit 2; anything unexpected is one line with a hint to rerun with ``-v`` (exit 1)."""
    args = build_parser().parse_args(argv)
    setup_cli_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except (UsageError, ConfigError, CheckpointError, FileNotFoundError) as e:
        logger.debug("%s failed", args.command, exc_info=True)
        sys.stderr.write(f"error: {_first_lines(e)}\n")
        return 2
    except Exception as e:  # noqa: BLE001 - the last resort: one line, the traceback with -v
        if args.verbose:
            raise
        sys.stderr.write(
            f"error: neox-acodm {args.command} failed: {type(e).__name__}: {_first_lines(e, 1)} "
            f"(run `neox-acodm -v {args.command} ...` for the traceback)\n"
        )
        return 1


def _first_lines(e: BaseException, n: int = 3) -> str:
    text = str(e).strip() or type(e).__name__
    return "\n".join(text.splitlines()[:n])[:1000]


if __name__ == "__main__":
    sys.exit(main())
