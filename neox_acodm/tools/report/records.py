"""Integrity of TensorBoard event files (TFRecord framing: u64 length, masked CRC-32C of the
length, data, masked CRC-32C of the data). A file that merely ends inside its last record was
cut short (a run in progress, or killed while writing): the records before it stand. A CRC
that does not match with more bytes after it is corruption, reported with the file and record."""

from __future__ import annotations

import struct
from pathlib import Path

from ..args import UsageError

__all__ = ["CorruptEventFile", "scan_event_file"]


class CorruptEventFile(UsageError):
    """An event file holds a damaged record (not just a cut-short end)."""


def _crc32c_impl():
    try:
        import google_crc32c  # C implementation (the `report` extra)

        return lambda data: google_crc32c.value(bytes(data))
    except ImportError:
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c  # pure Python

        return crc32c


_CRC = None


def _masked(data: bytes) -> int:
    global _CRC
    if _CRC is None:
        _CRC = _crc32c_impl()
    crc = _CRC(data) & 0xFFFFFFFF
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def scan_event_file(path: Path, check_data: bool = True) -> tuple[int, bool]:
    """(complete records, cut_short) of one event file; raises :class:`CorruptEventFile`."""
    size = path.stat().st_size
    n = pos = 0
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if not head:
                return n, False
            if len(head) < 12:
                return n, True
            length, head_crc = struct.unpack("<QI", head)
            if _masked(head[:8]) != head_crc:
                if pos + 12 >= size and n > 0:
                    return n, True
                raise CorruptEventFile(
                    f"{path}: record {n} (byte {pos}) has a damaged length field; "
                    f"the file is corrupt after {n} good records"
                )
            if pos + 16 + length > size:
                return n, True
            data = f.read(length)
            (data_crc,) = struct.unpack("<I", f.read(4))
            if check_data and _masked(data) != data_crc:
                raise CorruptEventFile(
                    f"{path}: record {n} (byte {pos}) fails its checksum; the file is corrupt after {n} good records"
                )
            n += 1
            pos += 16 + length
