"""One tensor between its wire forms (JSON `data`, binary extension bytes) and numpy.

Decoding is strict: the declared datatype decides what JSON values are acceptable (numbers
for numeric types, booleans for BOOL, strings for BYTES), integers must fit their type, and
the number of elements must equal the product of the declared shape. Nothing is allocated
from a declared shape before the data has been checked against it.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from edge_agent.errors import InferenceError, InvalidRequestError
from edge_agent.runtime.iospec import OIP_TO_NUMPY
from edge_agent.runtime.model import Array

_LENGTH = struct.Struct("<I")  # BYTES elements in binary form: 4-byte little-endian length
_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})


def element_count(shape: tuple[int, ...]) -> int:
    """The number of elements a tensor of `shape` holds."""
    return math.prod(shape)


def json_to_array(data: Any, datatype: str, shape: tuple[int, ...], where: str) -> Array:
    """Decode JSON `data` (nested or flat) into an array of `datatype` and `shape`."""
    if not isinstance(data, list):
        raise InvalidRequestError(f"{where}: 'data' must be a JSON array")
    if datatype == "BYTES":
        raw = _object_array(data, where)
    else:
        try:
            raw = np.array(data)
        except (ValueError, OverflowError) as e:
            raise InvalidRequestError(f"{where}: 'data' is not a rectangular array") from e
    _check_layout(raw.shape, shape, where)
    if raw.size == 0:
        return np.zeros(shape, dtype=OIP_TO_NUMPY[datatype])
    if datatype != "BOOL" and raw.dtype.kind in "iuf" and _holds_bool(data, raw.ndim):
        # numpy reads true/false among numbers as 1/0, so the JSON values themselves are checked.
        raise InvalidRequestError(f"{where}: {datatype} data must be JSON numbers, not true/false")
    return _coerce(raw, datatype, where).reshape(shape)


def _holds_bool(data: list[Any], depth: int) -> bool:
    """Whether a rectangular nest of `depth` JSON arrays holds a boolean."""
    values: Iterable[Any] = data
    for _ in range(depth - 1):
        values = itertools.chain.from_iterable(values)
    return bool in set(map(type, values))


def _object_array(data: list[Any], where: str) -> Array:
    raw = np.empty(0, dtype=object)
    try:
        raw = np.array(data, dtype=object)
    except ValueError as e:
        raise InvalidRequestError(f"{where}: 'data' is not a rectangular array") from e
    if not all(isinstance(value, str) for value in raw.flat):
        raise InvalidRequestError(f"{where}: BYTES data must be JSON strings")
    return raw


def _check_layout(found: tuple[int, ...], shape: tuple[int, ...], where: str) -> None:
    count = element_count(shape)
    if len(found) == 1 and found[0] == count:
        return  # flat, row-major
    if found == shape:
        return  # nested in the tensor's own shape
    size = element_count(found)
    if size != count:
        raise InvalidRequestError(
            f"{where}: 'data' has {size} elements, but shape {list(shape)} needs {count}"
        )
    raise InvalidRequestError(
        f"{where}: 'data' is nested as {list(found)}; give it flat or nested as {list(shape)}"
    )


def _coerce(raw: Array, datatype: str, where: str) -> Array:
    dtype = OIP_TO_NUMPY[datatype]
    kind = raw.dtype.kind
    if datatype == "BYTES":
        return raw
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidRequestError(f"{where}: BOOL data must be JSON true/false")
        return raw
    if datatype in _FLOAT_TYPES:
        if kind not in "iuf":
            raise InvalidRequestError(f"{where}: {datatype} data must be JSON numbers")
        with np.errstate(over="ignore"):  # overflow gives inf, which the finite check sees
            return raw.astype(dtype)
    if kind not in "iu":
        raise InvalidRequestError(f"{where}: {datatype} data must be JSON integers")
    info = np.iinfo(dtype)
    low, high = int(raw.min()), int(raw.max())
    if low < info.min or high > info.max:
        raise InvalidRequestError(
            f"{where}: values must be within {info.min}..{info.max} for {datatype}"
        )
    return raw.astype(dtype)


def binary_to_array(buf: bytes, datatype: str, shape: tuple[int, ...], where: str) -> Array:
    """Decode binary extension bytes into an array of `datatype` and `shape`."""
    count = element_count(shape)
    if datatype == "BYTES":
        return _binary_strings(buf, count, where).reshape(shape)
    dtype = OIP_TO_NUMPY[datatype]
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise InvalidRequestError(
            f"{where}: binary_data_size is {len(buf)} bytes, but {datatype} {list(shape)} "
            f"needs {expected}"
        )
    if datatype == "BOOL" and buf and int(np.frombuffer(buf, dtype=np.uint8).max()) > 1:
        raise InvalidRequestError(f"{where}: BOOL elements must be bytes 0 or 1")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _binary_strings(buf: bytes, count: int, where: str) -> Array:
    values = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + _LENGTH.size > len(buf):
            raise InvalidRequestError(
                f"{where}: binary BYTES data ends after {index} of {count} elements"
            )
        (length,) = _LENGTH.unpack_from(buf, offset)
        start, offset = offset + _LENGTH.size, offset + _LENGTH.size + length
        if offset > len(buf):
            raise InvalidRequestError(f"{where}: BYTES element {index} runs past the data")
        try:
            values[index] = buf[start:offset].decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidRequestError(f"{where}: BYTES element {index} is not UTF-8") from e
    if offset != len(buf):
        raise InvalidRequestError(
            f"{where}: binary_data_size is {len(buf)} bytes, but the {count} BYTES elements "
            f"take {offset}"
        )
    return values


def array_datatype(array: Array) -> str:
    """The OIP datatype of an output array."""
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind == "b":
        return "BOOL"
    if kind in "OUS":
        return "BYTES"
    names = {"i": "INT", "u": "UINT", "f": "FP"}
    if kind in names and size in (1, 2, 4, 8) and not (kind == "f" and size == 1):
        return f"{names[kind]}{size * 8}"
    raise InferenceError(f"output dtype {array.dtype} has no Open Inference Protocol datatype")


def array_to_json(array: Array) -> list[Any]:
    """The flat, row-major JSON `data` of an array (BYTES as strings)."""
    flat = array.reshape(-1)
    if array.dtype.kind in "OS":
        return [_text(value) for value in flat]
    values: list[Any] = flat.tolist()
    return values


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def array_to_binary(array: Array) -> bytes:
    """The binary extension bytes of an array: little-endian, row-major."""
    if array.dtype.kind in "OUS":
        parts = []
        for value in array.reshape(-1):
            raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            parts.append(_LENGTH.pack(len(raw)) + raw)
        return b"".join(parts)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
