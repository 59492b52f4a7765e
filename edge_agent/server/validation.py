"""Checks of decoded request tensors against the io schema of the model that will run them.

Everything a client can get wrong is found here, before onnxruntime sees it, and reported
as InvalidRequestError naming the input and what the model expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_agent.errors import InvalidRequestError
from edge_agent.runtime import LoadedModel
from edge_agent.runtime.iospec import VARIABLE
from edge_agent.runtime.model import Array
from edge_agent.server.oip import InferRequest, InputTensor
from edge_protocol import ModelIO, TensorSpec

FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})


@dataclass(frozen=True)
class InputLimits:
    """Per-request limits from the server settings."""

    max_request_batch: int
    allow_non_finite: bool = False


def describe(spec: TensorSpec) -> str:
    """`FP32 [-1, 32]`: how error messages show what a model expects."""
    return f"{spec.datatype} {list(spec.shape)}"


def validate_inputs(
    tensors: Sequence[InputTensor], model: LoadedModel, limits: InputLimits
) -> tuple[dict[str, Array], int]:
    """Check the tensors against `model`; return them by name and the request's row count."""
    specs = {spec.name: spec for spec in model.io.inputs}
    given = {tensor.name: tensor for tensor in tensors}
    unknown = sorted(given.keys() - specs.keys())
    if unknown:
        expected = ", ".join(f"{n!r} ({describe(s)})" for n, s in specs.items())
        raise InvalidRequestError(
            f"unknown input {unknown[0]!r}: model {model.name!r} takes {expected}"
        )
    for name, spec in specs.items():
        if name not in given:
            raise InvalidRequestError(f"missing input {name!r}: expected {describe(spec)}")
        check_tensor(given[name], spec, limits)
    rows = _batch_rows(tensors, limits) if model.batchable else 1
    return {name: tensor.array for name, tensor in given.items()}, rows


def check_tensor(tensor: InputTensor, spec: TensorSpec, limits: InputLimits) -> None:
    """Check one tensor's datatype, rank, dimensions and values against its spec."""
    where = f"input {tensor.name!r}"
    if tensor.datatype != spec.datatype:
        raise InvalidRequestError(
            f"{where}: datatype {tensor.datatype}, but the model expects {describe(spec)}"
        )
    if len(tensor.shape) != len(spec.shape):
        raise InvalidRequestError(
            f"{where}: shape {list(tensor.shape)} has rank {len(tensor.shape)}, but the model "
            f"expects rank {len(spec.shape)}: {describe(spec)}"
        )
    for axis, (got, want) in enumerate(zip(tensor.shape, spec.shape, strict=True)):
        if want not in (VARIABLE, got):
            raise InvalidRequestError(
                f"{where}: dimension {axis} is {got}, but the model expects {want} "
                f"({describe(spec)})"
            )
        if got == 0:
            raise InvalidRequestError(f"{where}: dimension {axis} is 0; tensors cannot be empty")
    if spec.datatype in FLOAT_TYPES and not limits.allow_non_finite:
        _check_finite(tensor.array, where)


def _check_finite(array: Array, where: str) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        index = int(np.argmin(finite.reshape(-1)))
        raise InvalidRequestError(
            f"{where}: element {index} is {array.reshape(-1)[index]}; NaN and infinite "
            "values are rejected by this server"
        )


def _batch_rows(tensors: Sequence[InputTensor], limits: InputLimits) -> int:
    rows = {tensor.name: tensor.shape[0] for tensor in tensors}
    if len(set(rows.values())) != 1:
        raise InvalidRequestError(f"inputs disagree on the batch dimension 0: {rows}")
    (count,) = set(rows.values())
    if count > limits.max_request_batch:
        raise InvalidRequestError(
            f"a request may hold at most {limits.max_request_batch} rows; this one has {count}"
        )
    return count


def select_outputs(request: InferRequest, io: ModelIO, model_name: str) -> list[tuple[str, bool]]:
    """The outputs to return, in order, each with whether it goes as binary data."""
    names = [spec.name for spec in io.outputs]
    if request.outputs is None:
        return [(name, request.binary_output) for name in names]
    chosen: list[tuple[str, bool]] = []
    for output in request.outputs:
        if output.name not in names:
            raise InvalidRequestError(
                f"unknown output {output.name!r}: model {model_name!r} produces "
                + ", ".join(repr(n) for n in names)
            )
        if any(name == output.name for name, _ in chosen):
            raise InvalidRequestError(f"output {output.name!r} is requested twice")
        binary = request.binary_output if output.binary is None else output.binary
        chosen.append((output.name, binary))
    return chosen
