"""Hostile request material for the REST API tests: lying .npz files, multipart parts, and the
statuses the OpenAPI document lists per route.
"""

from __future__ import annotations

import functools
import io
import json
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

OPENAPI = Path(__file__).resolve().parents[2] / "model_registry" / "api" / "openapi.json"
BOUNDARY = "hostile-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
ESC = "\x1b[2J"
UPLOAD_MB, DATASET_MB = 4, 8


@functools.cache
def documented() -> dict[tuple[str, str], set[int]]:
    document = json.loads(OPENAPI.read_text())
    return {
        (method.upper(), path): {int(status) for status in operation["responses"]}
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if method != "parameters"
    }


# --- .npz files that lie, built here with zipfile ------------------------------------------


def npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return header.getvalue()


@functools.cache
def zip_bomb(mib: int = 320) -> bytes:
    """X: zeros of `mib` MiB as float64, deflated at level 9 (about 1 KiB per MiB)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("X.npy", "w", force_zip64=True) as member:
            member.write(npy_header((mib * 1024 * 1024 // 64, 8)))
            block = bytes(1024 * 1024)
            for _ in range(mib):
                member.write(block)
        archive.writestr("y.npy", npy_header((mib * 1024 * 1024 // 64,)))
    return buffer.getvalue()


@functools.cache
def understated_bomb() -> bytes:
    """A bomb whose zip headers claim 1 KiB per member: only what comes out can tell."""
    data = bytearray(zip_bomb(64))
    # The uncompressed size of each local header (offset 22) and directory entry (24); with
    # a size there, zipfile ignores the true one in the zip64 extra field.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = data.find(signature)
        while start != -1:
            struct.pack_into("<I", data, start + offset, 1024)
            start = data.find(signature, start + 4)
    return bytes(data)


def npz(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def npy(array: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _duplicate_members() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("X.npy", npy(np.zeros((2, 2))))
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("X.npy", npy(np.ones((2, 2))))
    return buffer.getvalue()


GOOD_Y = npy(np.zeros(4))
BAD_NPZ: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "zip-bomb": (zip_bomb, 413, "expands to"),
    "understated-zip-bomb": (understated_bomb, 400, "npz"),
    "pickled-object-array": (lambda: npz(**{"X.npy": npy(np.array([{"a": 1}, None],
                                                                     dtype=object)),
                                             "y.npy": GOOD_Y}), 400, "pickles are refused"),
    "member-not-npy": (lambda: npz(**{"X.npy": npy(np.zeros((4, 2))), "y.csv": b"1,2"}),
                       400, "not an .npy"),
    "nested-archive": (lambda: npz(**{"X.npz": npz(**{"X.npy": npy(np.zeros(2))})}),
                       400, "not an .npy"),
    "too-many-members": (lambda: npz(**{f"a{n}.npy": GOOD_Y for n in range(40)}), 400,
                         "members"),
    "bad-npy-header": (lambda: npz(**{"X.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': oops}"}),
                       400, "header"),
    "header-claims-more-than-it-holds": (
        lambda: npz(**{"X.npy": npy_header((1000, 1000)) + bytes(64), "y.npy": GOOD_Y}),
        400, "header"),
    "duplicate-members": (_duplicate_members, 400, "twice"),
    "a-bare-npy": (lambda: npy(np.zeros((4, 2))), 400, "single .npy"),
    "broken-zip": (lambda: b"PK\x03\x04" + bytes(100), 400, "npz"),
    "not-a-zip": (lambda: b"X,y\n1,2\n", 400, "npz"),
}  # fmt: skip


def part(name: str | None, data: bytes, headers: str = "") -> bytes:
    disposition = "form-data" + (f'; name="{name}"; filename="{name}"' if name else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{headers}\r\n"
    return head.encode() + data + b"\r\n"


END = f"--{BOUNDARY}--\r\n".encode()


BIG = str(2**64)
