"""int8 quantization of MatMul/Gemm weights with onnxruntime.quantization, where it pays.

Dynamic quantization (weights int8, activations quantized per call) needs no data; with
calibration rows the model is quantized statically in QDQ form. Both use uint8 activations with
7-bit int8 weights (`reduce_range`): on x86 CPUs without VNNI the u8 x s8 kernels accumulate pairs
in int16 and saturate with full-range weights, so the same model would answer differently on
different devices; 7-bit weights keep every CPU exact, at a small accuracy cost.

Graphs without MatMul/Gemm weights (trees, linear models as ML-domain ops) pass through unchanged,
with the reason recorded. Before quantizing, operator-set imports are normalised (see opsets.py):
that is the cause of "Failed to find proper ai.onnx domain" on skl2onnx output.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped,unused-ignore]
from numpy.typing import NDArray
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

from model_registry.build.inspect import check_model_bytes, ort_failure
from model_registry.build.opsets import normalise_opset_imports
from model_registry.errors import BuildError, InvalidModelError


class _QuantizerChatter(logging.Filter):
    """Drops what onnxruntime's quantizer logs on the root logger below ERROR.

    It logs through `logging.warning()`/`logging.info()` at every push: advice to run its
    pre-processing script and a line per tensor without parameters, neither of which the
    operator can act on; the build report says what quantization did.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        quantizer = f"onnxruntime{os.sep}quantization{os.sep}" in record.pathname
        return record.levelno >= logging.ERROR or not quantizer


logging.getLogger().addFilter(_QuantizerChatter())  # the root logger: where those records start

CALIBRATION_BATCH_ROWS = 64
# onnxruntime's dynamic quantizer has integer kernels for MatMul only; Gemm needs QDQ (static).
DYNAMIC_OPS = ("MatMul",)
STATIC_OPS = ("MatMul", "Gemm")
QUANTIZED_OPS = frozenset({"MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear"})
_COMMON_OPTIONS: dict[str, Any] = {
    "weight_type": QuantType.QInt8,
    "reduce_range": True,
    "per_channel": False,
    "extra_options": {"MatMulConstBOnly": True},
}


@dataclass(frozen=True)
class QuantizationResult:
    """The model devices will run, how it was quantized (or why not) and the sizes in bytes."""

    model_bytes: bytes
    method: str  # "dynamic" | "static_qdq" | "none"
    reason: str
    size_before: int
    size_after: int


def quantize_model(
    model_bytes: bytes, *, calibration: NDArray[Any] | None = None
) -> QuantizationResult:
    """Quantize MatMul/Gemm weights to int8 (static QDQ with calibration rows, else dynamic)."""
    model = _parse(model_bytes)
    ops = STATIC_OPS if calibration is not None else DYNAMIC_OPS
    weights = constant_weight_nodes(model, ops)
    if not weights:
        return _unchanged(model_bytes, _nothing_to_quantize(model, ops))
    model = normalise_opset_imports(model)
    if calibration is None:
        method, quantized = "dynamic", _run_dynamic(model)
    else:
        method, quantized = "static_qdq", _run_static(model, calibration)
    if not QUANTIZED_OPS & {node.op_type for node in quantized.graph.node}:
        return _unchanged(model_bytes, "onnxruntime's quantizer left every weight in float32")
    data = bytes(quantized.SerializeToString())
    if len(data) >= len(model_bytes):
        reason = f"the int8 model ({len(data)} bytes) is not smaller than the original"
        return _unchanged(model_bytes, reason)
    how = (
        "dynamic: activations quantized at run time"
        if calibration is None
        else f"static QDQ: activation ranges calibrated on {len(calibration)} rows"
    )
    reason = f"weights of {len(weights)} {'/'.join(ops)} node(s) quantized to int8 ({how})"
    return QuantizationResult(data, method, reason, len(model_bytes), len(data))


def constant_weight_nodes(model: onnx.ModelProto, op_types: tuple[str, ...]) -> list[str]:
    """Names of default-domain `op_types` nodes whose weight input is a float32 initializer."""
    graph_inputs = {value.name for value in model.graph.input}
    # An initializer that is also a graph input can be overridden at run time: not constant.
    constants = {
        init.name
        for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.FLOAT and init.name not in graph_inputs
    }
    return [
        node.name or node.op_type
        for node in model.graph.node
        if node.domain in ("", "ai.onnx")
        and node.op_type in op_types
        and len(node.input) > 1
        and node.input[1] in constants
    ]


def _parse(model_bytes: bytes) -> onnx.ModelProto:
    # The quantizer's onnx.load of its own output follows external data: check here as well.
    check_model_bytes(model_bytes)
    try:
        return onnx.load_from_string(model_bytes)
    except DecodeError as e:
        raise InvalidModelError(f"the model is not a valid ONNX protobuf: {e}") from e


def _nothing_to_quantize(model: onnx.ModelProto, op_types: tuple[str, ...]) -> str:
    seen = sorted({f"{node.domain}.{node.op_type}".lstrip(".") for node in model.graph.node})
    reason = (
        f"no {'/'.join(op_types)} with constant float32 weights to quantize; "
        f"the graph's operators ({', '.join(seen) or 'none'}) pass through unchanged"
    )
    if op_types == DYNAMIC_OPS and constant_weight_nodes(model, STATIC_OPS):
        reason += "; its Gemm weights can be quantized statically: give calibration rows"
    return reason


def _unchanged(model_bytes: bytes, reason: str) -> QuantizationResult:
    size = len(model_bytes)
    return QuantizationResult(model_bytes, "none", reason, size, size)


def _run_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory(prefix="quantize-") as directory:
        out = Path(directory) / "int8.onnx"
        try:
            quantize_dynamic(model, out, op_types_to_quantize=list(DYNAMIC_OPS), **_COMMON_OPTIONS)
        except Exception as e:
            # The quantizer fails with whatever its graph passes (and onnxruntime) raise.
            raise BuildError(f"dynamic int8 quantization failed: {ort_failure(e)}") from e
        return onnx.load(out)


def _run_static(model: onnx.ModelProto, calibration: NDArray[Any]) -> onnx.ModelProto:
    initializers = {init.name for init in model.graph.initializer}
    # Older IR versions list initializers among the graph inputs; the rows feed the other one.
    feeds = [value.name for value in model.graph.input if value.name not in initializers]
    reader = _RowReader(feeds[0], calibration)
    with tempfile.TemporaryDirectory(prefix="quantize-") as directory:
        out = Path(directory) / "int8.onnx"
        try:
            quantize_static(
                model, out, reader, quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8, op_types_to_quantize=list(STATIC_OPS),
                **_COMMON_OPTIONS,
            )  # fmt: skip
        except Exception as e:
            raise BuildError(f"static int8 (QDQ) quantization failed: {ort_failure(e)}") from e
        return onnx.load(out)


class _RowReader:
    """Feeds calibration rows to onnxruntime's calibrator in small batches."""

    def __init__(self, input_name: str, rows: NDArray[Any]) -> None:
        self._batches: Iterator[dict[str, NDArray[Any]]] = iter(
            {input_name: rows[start : start + CALIBRATION_BATCH_ROWS].astype(np.float32)}
            for start in range(0, len(rows), CALIBRATION_BATCH_ROWS)
        )

    def get_next(self) -> dict[str, NDArray[Any]] | None:
        """Return the next batch of inputs, or None when the rows are exhausted."""
        return next(self._batches, None)
