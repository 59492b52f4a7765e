"""Self-test comparison of model outputs with the golden values."""

from __future__ import annotations

import struct

import pytest

from edge_protocol import SelfTest, TensorData, check_selftest_outputs
from edge_protocol.errors import SelfTestMismatchError
from tests.protocol.factory import floats_le

INPUT = TensorData("x", "FP32", (1, 2), floats_le([1.0, 2.0]))
PROBS = TensorData("probabilities", "FP32", (1, 3), floats_le([0.1, 0.7, 0.2]))
LABEL = TensorData("label", "INT64", (1,), struct.pack("<q", 1))
SELFTEST = SelfTest(inputs=(INPUT,), outputs=(LABEL, PROBS), atol="1e-3", rtol="0")


def _outputs(probs: list[float], label: int = 1, shape: tuple[int, ...] = (1, 3)) -> dict:
    return {
        "label": TensorData("label", "INT64", (1,), struct.pack("<q", label)),
        "probabilities": TensorData("probabilities", "FP32", shape, floats_le(probs)),
    }


def test_outputs_within_tolerance_pass() -> None:
    check_selftest_outputs(SELFTEST, _outputs([0.1005, 0.6995, 0.2]))


@pytest.mark.parametrize(
    ("outputs", "complaint"),
    [
        (_outputs([0.1, 0.71, 0.2]), "element 1"),
        (_outputs([0.1, 0.7, 0.2], label=2), "label"),
        (_outputs([0.1, float("nan"), 0.2]), "element 1"),
        (_outputs([0.1, 0.7, 0.2, 0.0], shape=(1, 4)), r"\[1, 4\]"),
        ({"label": LABEL}, "no output named 'probabilities'"),
    ],
)
def test_mismatching_outputs_are_rejected(outputs: dict, complaint: str) -> None:
    with pytest.raises(SelfTestMismatchError, match=complaint):
        check_selftest_outputs(SELFTEST, outputs)
