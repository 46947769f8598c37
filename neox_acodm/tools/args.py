"""Argument types and checks shared by the subcommands: every flag value and output path is
checked before any work starts, and a bad one is a :class:`UsageError` (exit 2, one line)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = [
    "UsageError",
    "comma_ints",
    "comma_names",
    "existing_dir",
    "existing_file",
    "new_file",
    "out_dir",
    "positive_float",
    "positive_int",
    "nonneg_int",
]


class UsageError(Exception):
    """A bad input of a subcommand; the CLI prints ``error: <message>`` and exits with 2."""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def nonneg_int(text: str) -> int:
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {v}")
    return v


def positive_float(text: str) -> float:
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return v


def comma_ints(text: str) -> tuple[int, ...]:
    """``1,2,3`` -> (1, 2, 3): non-negative, no duplicates."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 1,2,3")
    values = tuple(nonneg_int(p) for p in parts)
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: a value is repeated")
    return values


def comma_names(text: str) -> tuple[str, ...]:
    """``a,b`` -> ('a', 'b'): non-empty, no duplicates."""
    parts = tuple(p.strip() for p in text.split(","))
    if any(not p for p in parts) or len(set(parts)) != len(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated distinct names, e.g. uniform,acodm")
    return parts


def existing_file(path: str, flag: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag} {path}: {'is a directory' if p.is_dir() else 'no such file'}")
    return p


def existing_dir(path: str, flag: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise UsageError(f"{flag} {path}: {'is a file, not a directory' if p.exists() else 'no such directory'}")
    return p


def out_dir(path: str, flag: str = "--out") -> Path:
    """An output directory: absent (it is created on success) or a directory."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a directory; choose another path")
    above = next((a for a in p.absolute().parents if a.exists()), None)
    if above is not None and not above.is_dir():
        raise UsageError(f"{flag} {path}: {above} is a file, so the folder cannot be made there")
    return p


def new_file(path: str, flag: str = "--out") -> Path:
    """An output file: its folder must exist, and the path must not be a directory."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give a file path")
    if not p.parent.is_dir():
        raise UsageError(f"{flag} {path}: the folder {p.parent} does not exist")
    return p
