"""One spool file's bytes: `magic | length | crc32 | payload`, so a torn file is recognized.

The format of `spool.py`'s files (its docstring says why each message is a file of its own).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

MAGIC = b"ESP1"
HEADER = struct.Struct(">4sII")  # magic, payload length, crc32 of the payload


def encode_record(payload: bytes) -> bytes:
    """The bytes of one spool file: header, then the payload."""
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def parse_record(data: bytes) -> bytes | None:
    """The payload of a spool file, or None when it is torn or damaged."""
    if len(data) < HEADER.size:
        return None
    magic, length, crc = HEADER.unpack_from(data)
    payload = data[HEADER.size :]
    if magic != MAGIC or length != len(payload) or zlib.crc32(payload) != crc:
        return None
    return payload


def checked_size(path: Path) -> int | None:
    """The file's size if its header is whole and its length matches, else None."""
    try:
        with path.open("rb") as handle:
            header = handle.read(HEADER.size)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return None
    if len(header) < HEADER.size:
        return None
    magic, length, _crc = HEADER.unpack(header)
    if magic != MAGIC or size != HEADER.size + length:
        return None
    return size
