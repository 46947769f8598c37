"""Logging helpers: module loggers only, no handlers configured at import."""

from __future__ import annotations

import logging

_warned: set[str] = set()


def warn_once(logger: logging.Logger, msg: str, *args) -> None:
    key = msg % args if args else msg
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg, *args)


def setup_cli_logging(level: int = logging.INFO) -> None:
    """For entry points only (CLI, demo): a plain stderr handler."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
