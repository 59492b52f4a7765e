"""What a release says of its model's tensors: input and output specs, and its self-test.

Part of the release document (metadata.py); the same strict `from_dict` and faithful `to_dict`.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from edge_protocol.errors import MetadataFormatError
from edge_protocol.fields import FieldReader

# Open Inference Protocol v2 tensor datatypes, with their element size in bytes.
ELEMENT_SIZES: dict[str, int] = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8,
    "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
    "FP16": 2, "FP32": 4, "FP64": 8,
}  # fmt: skip
DATATYPES = frozenset({*ELEMENT_SIZES, "BYTES"})
MAX_TENSORS = 64
MAX_RANK = 8
T = TypeVar("T")
_DECIMAL = re.compile(r"^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, datatype and shape (-1 for a variable dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> Self:
        """Parse and validate a tensor description."""
        r = FieldReader(obj, path)
        name = r.string("name", max_length=256)
        datatype = _read_datatype(r)
        shape = _read_shape(r, allow_variable=True)
        return cls(name, datatype, shape, r.unrecognized())

    def to_dict(self) -> dict[str, Any]:
        """Return the wire object."""
        return {
            **self.unrecognized_fields,
            "name": self.name,
            "datatype": self.datatype,
            "shape": list(self.shape),
        }


@dataclass(frozen=True)
class ModelIO:
    """The inputs and outputs a model declares."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> Self:
        """Parse and validate an io object."""
        r = FieldReader(obj, path)
        inputs = _read_list(r, "inputs", TensorSpec.from_dict)
        outputs = _read_list(r, "outputs", TensorSpec.from_dict)
        return cls(inputs, outputs, r.unrecognized())

    def to_dict(self) -> dict[str, Any]:
        """Return the wire object."""
        return {
            **self.unrecognized_fields,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }


@dataclass(frozen=True)
class TensorData:
    """A concrete tensor: raw little-endian row-major bytes, carried as base64."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> Self:
        """Parse a tensor and check its byte length against datatype and shape."""
        r = FieldReader(obj, path)
        name = r.string("name", max_length=256)
        datatype = _read_datatype(r)
        if datatype == "BYTES":
            raise MetadataFormatError(f"{r.path('datatype')}: BYTES tensors have no fixed layout")
        shape = _read_shape(r, allow_variable=False)
        encoded = r.string("data", max_length=4 * 1024 * 1024)
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as e:
            raise MetadataFormatError(f"{r.path('data')}: not valid base64") from e
        expected = math.prod(shape) * ELEMENT_SIZES[datatype]
        if len(data) != expected:
            raise MetadataFormatError(
                f"{r.path('data')}: {len(data)} bytes, "
                f"but {datatype} {list(shape)} needs {expected}"
            )
        return cls(name, datatype, shape, data, r.unrecognized())

    def to_dict(self) -> dict[str, Any]:
        """Return the wire object."""
        return {
            **self.unrecognized_fields,
            "name": self.name,
            "datatype": self.datatype,
            "shape": list(self.shape),
            "data": base64.b64encode(self.data).decode("ascii"),
        }


@dataclass(frozen=True)
class SelfTest:
    """Golden inference the agent must reproduce before a model may serve."""

    inputs: tuple[TensorData, ...]
    outputs: tuple[TensorData, ...]
    atol: str = "1e-4"  # decimal strings: signed content carries no floats
    rtol: str = "1e-3"
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> Self:
        """Parse and validate a self-test object."""
        r = FieldReader(obj, path)
        inputs = _read_list(r, "inputs", TensorData.from_dict)
        outputs = _read_list(r, "outputs", TensorData.from_dict)
        if not inputs or not outputs:
            raise MetadataFormatError(f"{path}: needs at least one input and one output")
        atol, rtol = _read_decimal(r, "atol"), _read_decimal(r, "rtol")
        return cls(inputs, outputs, atol, rtol, r.unrecognized())

    def to_dict(self) -> dict[str, Any]:
        """Return the wire object."""
        return {
            **self.unrecognized_fields,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "atol": self.atol,
            "rtol": self.rtol,
        }


def _read_datatype(r: FieldReader) -> str:
    datatype = r.string("datatype", max_length=8)
    if datatype not in DATATYPES:
        raise MetadataFormatError(f"{r.path('datatype')}: {datatype!r} is not an OIP v2 datatype")
    return datatype


def _read_shape(r: FieldReader, *, allow_variable: bool) -> tuple[int, ...]:
    dims = r.array("shape", max_items=MAX_RANK)
    lowest = -1 if allow_variable else 1
    for dim in dims:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < lowest or dim == 0:
            kind = "a positive integer or -1" if allow_variable else "a positive integer"
            raise MetadataFormatError(f"{r.path('shape')}: every dimension must be {kind}")
    return tuple(dims)


def _read_decimal(r: FieldReader, key: str) -> str:
    value = r.string(key, max_length=32)
    if not _DECIMAL.fullmatch(value) or not math.isfinite(float(value)):
        raise MetadataFormatError(f"{r.path(key)}: expected a non-negative decimal string")
    return value


def _read_list(r: FieldReader, key: str, parse: Callable[[Any, str], T]) -> tuple[T, ...]:
    items = r.array(key, max_items=MAX_TENSORS)
    return tuple(parse(item, f"{r.path(key)}[{i}]") for i, item in enumerate(items))
