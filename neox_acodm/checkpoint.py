"""Atomic, versioned, checksummed persistence of mixer state.

File format: one header line ``NEOX_ACODM_STATE 1 <sha256 of the payload>\\n`` followed by the
payload, a ``torch.save`` of plain Python and tensors (read back with ``weights_only=True``).
A torn, truncated or bit-flipped file fails :func:`load` with a :class:`CheckpointError` that
names the path; it never loads silently.
"""

from __future__ import annotations

import glob
import hashlib
import io
import logging
import os
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
_MAGIC = b"NEOX_ACODM_STATE 1 "
_WHAT = (
    "a neox_acodm state file written by MixingRuntime.save (e.g. <save>/global_stepN/acodm/"
    "state.pt or <save>/acodm/iter_N.pt) or a proxy policy written by a proxy source run"
)


class CheckpointError(ValueError):
    """An unreadable, corrupted or inconsistent state file; the message names the path."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale_temporaries(path: Path) -> None:
    """Temporaries of ``path`` left by a killed save (same target only)."""
    for tmp in glob.glob(str(path.parent / f".{glob.escape(path.name)}.*.tmp")):
        try:
            os.unlink(tmp)
            logger.info("acodm: removed %s left by an interrupted save", tmp)
        except OSError:
            pass


def atomic_write(path: str | os.PathLike, *chunks: bytes) -> None:
    """Write ``chunks`` to a temp file in the same directory, fsync, then rename over ``path``:
    a crash leaves either the old file or the new one, never a torn file. The file gets the
    permissions of a normally created file (0666 & ~umask); temporaries of ``path`` left by a
    killed write are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_save(obj, path: str | os.PathLike) -> None:
    """:func:`atomic_write` of ``obj`` (``torch.save``) behind a checksummed header."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    atomic_write(path, _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n", payload)


def load(path: str | os.PathLike) -> dict:
    """Read and verify a file written by :func:`atomic_save`; a mapping of tensors and plain
    Python. Raises :class:`CheckpointError` (or FileNotFoundError) naming ``path``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"acodm checkpoint {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e}); it should be {_WHAT}") from None
    if not raw:
        raise CheckpointError(f"{path}: the file is empty; it should be {_WHAT}")
    if not raw.startswith(_MAGIC):
        raise CheckpointError(f"{path}: not a neox_acodm state file (no NEOX_ACODM_STATE header); it should be {_WHAT}")
    header, sep, payload = raw.partition(b"\n")
    digest = header[len(_MAGIC) :].decode("ascii", "replace")
    if not sep or hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(
            f"{path}: checksum mismatch (the file is truncated or corrupted); restore it from a good checkpoint"
        )
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors have many types
        raise CheckpointError(
            f"{path}: the payload cannot be read ({type(e).__name__}); it should be {_WHAT}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not the expected mapping; it should be {_WHAT}")
    return state
