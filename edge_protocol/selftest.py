"""Comparing a model's outputs with a release's golden self-test.

Pure Python on raw little-endian bytes, so the rule is defined once, here, independent of the
array library an agent uses: floating outputs match when `|actual - expected| <= atol +
rtol * |expected|` element-wise (numpy's `allclose` rule), every other datatype matches exactly.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

from edge_protocol.errors import SelfTestMismatchError
from edge_protocol.metadata import SelfTest, TensorData

_FLOAT_FORMATS = {"FP16": "e", "FP32": "f", "FP64": "d"}


def check_selftest_outputs(selftest: SelfTest, actual: Mapping[str, TensorData]) -> None:
    """Raise SelfTestMismatchError unless `actual` reproduces every expected output."""
    atol, rtol = float(selftest.atol), float(selftest.rtol)
    for expected in selftest.outputs:
        got = actual.get(expected.name)
        if got is None:
            raise SelfTestMismatchError(f"model produced no output named {expected.name!r}")
        if (got.datatype, got.shape) != (expected.datatype, expected.shape):
            raise SelfTestMismatchError(
                f"output {expected.name!r} is {got.datatype} {list(got.shape)}, "
                f"expected {expected.datatype} {list(expected.shape)}"
            )
        _compare_values(expected, got, atol, rtol)


def _compare_values(expected: TensorData, got: TensorData, atol: float, rtol: float) -> None:
    fmt = _FLOAT_FORMATS.get(expected.datatype)
    if fmt is None:
        if got.data != expected.data:
            raise SelfTestMismatchError(f"output {expected.name!r} differs from the golden values")
        return
    if len(got.data) != len(expected.data):
        raise SelfTestMismatchError(f"output {expected.name!r} has the wrong byte length")
    pairs = zip(
        struct.iter_unpack(f"<{fmt}", expected.data),
        struct.iter_unpack(f"<{fmt}", got.data),
        strict=True,
    )
    for index, ((want,), (have,)) in enumerate(pairs):
        if not (math.isfinite(have) and abs(have - want) <= atol + rtol * abs(want)):
            raise SelfTestMismatchError(
                f"output {expected.name!r} element {index} is {have!r}, expected {want!r} "
                f"(atol {atol}, rtol {rtol})"
            )
