"""The io schema of an onnxruntime session, in Open Inference Protocol v2 terms.

onnxruntime describes a tensor as a type string (`tensor(float)`) and a shape whose variable
dimensions are strings (symbolic names) or None. OIP v2 wants a datatype name (`FP32`) and
-1 for every variable dimension. The small functions here do that translation, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from edge_agent.errors import UnsupportedModelError
from edge_protocol import ModelIO, TensorSpec

VARIABLE = -1

ORT_TO_OIP: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

# numpy dtypes in explicit little-endian form: the binary extension's byte order.
OIP_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

Dim = int | str | None


class NodeArg(Protocol):
    """What onnxruntime's `get_inputs()` / `get_outputs()` items offer."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def shape(self) -> Sequence[Dim]: ...


def oip_datatype(ort_type: str) -> str:
    """Return the OIP v2 datatype of an onnxruntime type string, or raise UnsupportedModelError."""
    datatype = ORT_TO_OIP.get(ort_type)
    if datatype is None:
        raise UnsupportedModelError(
            f"onnxruntime type {ort_type!r} has no Open Inference Protocol datatype "
            "(export classifiers without ZipMap; bfloat16 and sequences are not served)"
        )
    return datatype


def oip_shape(dims: Sequence[Dim]) -> tuple[int, ...]:
    """Return the OIP shape of onnxruntime dims: symbolic or unknown dimensions become -1."""
    return tuple(dim if isinstance(dim, int) and dim > 0 else VARIABLE for dim in dims)


def tensor_spec(arg: NodeArg) -> TensorSpec:
    """Describe one onnxruntime input or output as a TensorSpec."""
    return TensorSpec(name=arg.name, datatype=oip_datatype(arg.type), shape=oip_shape(arg.shape))


def derive_io(inputs: Sequence[NodeArg], outputs: Sequence[NodeArg]) -> ModelIO:
    """Return the ModelIO of a session from its `get_inputs()` and `get_outputs()`."""
    return ModelIO(
        inputs=tuple(tensor_spec(arg) for arg in inputs),
        outputs=tuple(tensor_spec(arg) for arg in outputs),
    )


def shares_batch_axis(inputs: Sequence[NodeArg], outputs: Sequence[NodeArg]) -> bool:
    """Whether requests may be stacked along dimension 0 and the results split back.

    Every input and output needs a variable first dimension; where onnxruntime knows the
    symbolic names, they must all be the same name (`N` in `X[N, 32] -> label[N]`), since
    a differently named first dimension is not the batch.
    """
    args = [*inputs, *outputs]
    if not inputs or not outputs or any(len(arg.shape) == 0 for arg in args):
        return False
    first = [arg.shape[0] for arg in args]
    if any(isinstance(dim, int) and dim > 0 for dim in first):
        return False
    names = {dim for dim in first if isinstance(dim, str)}
    return len(names) <= 1
