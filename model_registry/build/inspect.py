"""What an ONNX model takes and returns, as onnxruntime sees it.

The release's `io` field is read from a real onnxruntime session rather than from the graph
proto, so a model that onnxruntime cannot load is refused here, before anything is signed.

Every session of the build is made here, and only from bytes that passed
`edge_protocol.check_self_contained`: a tensor stored as "external data" would make onnxruntime
read a file of this host (the release key, the tokens) into the model and so into the signed
self-test. onnxruntime's own error text is never passed on either, since it can quote paths,
sizes and bytes of files; clients get our words for it and the registry log keeps the original.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from edge_protocol import ModelIO, TensorSpec, check_self_contained
from edge_protocol.errors import ExternalDataError, MetadataFormatError, ModelFormatError
from model_registry.errors import InvalidModelError
from model_registry.file_kinds import describe

# onnxruntime's tensor element types and their Open Inference Protocol v2 datatypes.
ORT_TO_OIP: dict[str, str] = {
    "float": "FP32", "double": "FP64", "float16": "FP16",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "bool": "BOOL", "string": "BYTES",
}  # fmt: skip

# onnxruntime raises its own exception types (not subclasses of RuntimeError) from the binding.
ORT_ERRORS: tuple[type[BaseException], ...] = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
    RuntimeError,
    ValueError,
)
# What each onnxruntime exception means, in words that quote nothing of the model or the host.
_ORT_FAILURES: dict[str, str] = {
    "InvalidProtobuf": "it is not an ONNX protobuf onnxruntime can parse",
    "InvalidGraph": (
        "its graph does not pass onnxruntime's checks (an undefined input, a type or shape "
        "an operator does not take, a missing attribute)"
    ),
    "NotImplemented": (
        "it uses an operator, operator-set version or type this onnxruntime does not implement"
    ),
    "InvalidArgument": (
        "onnxruntime found an invalid argument (a node input, an attribute, a type or a shape)"
    ),
    "NoSuchFile": "onnxruntime was asked to open a file",
}
LOG_DETAIL_CHARS = 2000
_TENSOR_TYPE = re.compile(r"^tensor\((\w+)\)$")
log = logging.getLogger(__name__)


def open_session(model_bytes: bytes) -> Any:
    """Load `model_bytes` into an onnxruntime CPU session, or raise InvalidModelError."""
    if not model_bytes:
        raise InvalidModelError("the model file is empty")
    check_model_bytes(model_bytes)
    try:
        return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as e:
        raise InvalidModelError(
            f"onnxruntime {ort.__version__} cannot load the model: {ort_failure(e)}"
        ) from e


def check_model_bytes(model_bytes: bytes) -> None:
    """Refuse (InvalidModelError) a model that refers to external data or cannot be scanned."""
    # A joblib file or a text file: say what it is rather than how protobuf parsing failed.
    not_onnx = describe("the model", model_bytes)
    if not_onnx is not None:
        raise InvalidModelError(not_onnx)
    try:
        check_self_contained(model_bytes)
    except ExternalDataError as e:
        raise InvalidModelError(str(e)) from e
    except ModelFormatError as e:
        raise InvalidModelError(f"the model is not a well-formed ONNX protobuf: {e}") from e


def ort_failure(error: BaseException) -> str:
    """Our own words for an onnxruntime (or quantizer) failure; the original goes to the log."""
    kind = type(error).__name__
    log.warning("onnxruntime failed (%s): %.*s", kind, LOG_DETAIL_CHARS, error)
    meaning = _ORT_FAILURES.get(kind, f"onnxruntime failed ({kind})")
    return f"{meaning}; the registry log has onnxruntime's own message"


def describe_session(session: Any) -> ModelIO:
    """Return the inputs and outputs of a loaded session as the release's `io`."""
    inputs = tuple(_tensor_spec(arg, "input") for arg in session.get_inputs())
    outputs = tuple(_tensor_spec(arg, "output") for arg in session.get_outputs())
    io = ModelIO(inputs, outputs)
    try:
        # Round-trip through the strict parser so the limits devices enforce hold here too.
        return ModelIO.from_dict(io.to_dict(), "io")
    except MetadataFormatError as e:
        raise InvalidModelError(f"the model's inputs/outputs cannot be described: {e}") from e


def inspect_model(model_bytes: bytes) -> ModelIO:
    """Load a model in onnxruntime and return its inputs and outputs (OIP datatypes, -1 dims)."""
    return describe_session(open_session(model_bytes))


def _tensor_spec(arg: Any, role: str) -> TensorSpec:
    name, ort_type = str(arg.name), str(arg.type)
    match = _TENSOR_TYPE.match(ort_type)
    if match is None:
        raise InvalidModelError(_non_tensor_message(role, name, ort_type))
    datatype = ORT_TO_OIP.get(match.group(1))
    if datatype is None:
        raise InvalidModelError(
            f"{role} {name!r} has element type {match.group(1)}, "
            "which has no Open Inference Protocol datatype"
        )
    return TensorSpec(name, datatype, _shape(arg.shape, role, name))


def _non_tensor_message(role: str, name: str, ort_type: str) -> str:
    message = f"{role} {name!r} is {ort_type}, not a tensor; devices serve tensors only"
    if ort_type.startswith("seq(map("):
        # A list of dicts is what skl2onnx's ZipMap produces for classifier probabilities.
        message += (
            " (this is skl2onnx's ZipMap: convert the classifier with "
            "options={id(model): {'zipmap': False}} to get a probability tensor)"
        )
    return message


def _shape(dims: Any, role: str, name: str) -> tuple[int, ...]:
    # onnxruntime reports a symbolic dimension as a string and an unknown one as None.
    if dims is None:
        raise InvalidModelError(f"{role} {name!r} has no declared rank")
    return tuple(dim if isinstance(dim, int) and dim > 0 else -1 for dim in dims)
