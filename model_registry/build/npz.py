"""Reading `.npz` archives that someone else made: bounded in size, numbers only, no pickles.

`numpy.load` trusts the archive: a few hundred KiB of zeros compressed at level 9 expand to
hundreds of MiB while it reads. This reader checks the archive before it decompresses
anything, and each member while it does: at most MAX_MEMBERS members, each a `.npy` file
stored or deflated, unencrypted, with a version 1 or 2 header whose dtype holds no Python
objects; the sizes the zip directory declares, the sizes the `.npy` headers imply and the
bytes that actually come out must agree, and all of it must fit `max_bytes`.
"""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from model_registry.errors import InvalidInputError, TooLargeError

MAX_MEMBERS = 32
MAX_HEADER_BYTES = 10_000  # numpy's own default bound on an .npy header
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_NPY_MAGIC = b"\x93NUMPY"
# What zipfile and numpy raise on bytes that are not what they claim to be.
_BROKEN = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError)


def read_npz_bytes(data: bytes, what: str, max_bytes: int) -> dict[str, NDArray[Any]]:
    """Return the arrays of an `.npz` held in memory, or raise InvalidInputError naming `what`."""
    if data.startswith(_NPY_MAGIC):
        raise InvalidInputError(f"{what}: is a single .npy array, not an .npz archive")
    if not data.startswith(b"PK"):
        raise InvalidInputError(f"{what}: not a readable .npz archive of arrays (not a zip file)")
    return _read(io.BytesIO(data), what, max_bytes)


def read_npz_file(path: Path, max_bytes: int) -> dict[str, NDArray[Any]]:
    """Return the arrays of an `.npz` file, or raise InvalidInputError naming the path."""
    try:
        with path.open("rb") as source:
            start = source.read(len(_NPY_MAGIC))
            if start == _NPY_MAGIC:
                raise InvalidInputError(f"{path}: is a single .npy array, not an .npz archive")
            source.seek(0)
            return _read(source, str(path), max_bytes)
    except FileNotFoundError as e:
        raise InvalidInputError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise InvalidInputError(f"{path}: is a directory, not an .npz file") from e


def _read(source: IO[bytes], what: str, max_bytes: int) -> dict[str, NDArray[Any]]:
    try:
        with zipfile.ZipFile(source) as archive:
            members = _check_directory(archive, what, max_bytes)
            return {name[: -len(".npy")]: _member(archive, info, what) for name, info in members}
    except (InvalidInputError, TooLargeError):
        raise
    except _BROKEN as e:
        raise InvalidInputError(f"{what}: not a readable .npz archive of arrays ({e})") from e


def _check_directory(
    archive: zipfile.ZipFile, what: str, max_bytes: int
) -> list[tuple[str, zipfile.ZipInfo]]:
    """Check what the zip directory declares, before anything is decompressed."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise InvalidInputError(f"{what}: has {len(infos)} members; at most {MAX_MEMBERS}")
    names = [info.filename for info in infos]
    for info in infos:
        name = info.filename
        if not name.endswith(".npy") or "/" in name or "\0" in name or len(name) > 132:
            raise InvalidInputError(f"{what}: member {name[:60]!a} is not an .npy array")
        if names.count(name) > 1:
            raise InvalidInputError(f"{what}: member {name!a} appears twice")
        if info.flag_bits & 0x1:
            raise InvalidInputError(f"{what}: member {name!a} is encrypted")
        if info.compress_type not in _METHODS:
            raise InvalidInputError(f"{what}: member {name!a} is compressed in an unusual way")
    declared = sum(info.file_size for info in infos)
    if declared > max_bytes:
        raise TooLargeError(f"{what}: expands to {declared} bytes; the limit is {max_bytes} bytes")
    return list(zip(names, infos, strict=True))


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> NDArray[Any]:
    label = f"{what}: member {info.filename!a}"
    with archive.open(info) as stream:
        shape, fortran, dtype = _header(stream, label)
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        # The header's claim must match the directory's, which was checked against the limit.
        if stream.tell() + nbytes != info.file_size:
            raise InvalidInputError(f"{label}: its header does not match its size")
        data = stream.read(nbytes)
        if len(data) != nbytes or stream.read(1):
            raise InvalidInputError(f"{label}: holds a different number of bytes than it says")
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C")


def _header(stream: IO[bytes], label: str) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(stream, MAX_HEADER_BYTES)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(stream, MAX_HEADER_BYTES)
        else:
            raise InvalidInputError(f"{label}: .npy format version {version} is not read here")
    except (ValueError, SyntaxError, TypeError) as e:
        raise InvalidInputError(f"{label}: not a valid .npy header ({e})") from e
    shape, fortran, dtype = header
    if any(n < 0 for n in shape):
        raise InvalidInputError(f"{label}: a negative dimension in its shape {shape}")
    if dtype.hasobject:
        # What np.load(allow_pickle=False) refuses too: object arrays are pickles.
        raise InvalidInputError(f"{label}: holds Python objects (pickles are refused)")
    return tuple(int(n) for n in shape), bool(fortran), dtype
