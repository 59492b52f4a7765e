"""A model loaded in onnxruntime, and running it on rows of features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_protocol import ModelIO, TensorSpec
from model_registry.build.inspect import ORT_ERRORS, describe_session, open_session, ort_failure
from model_registry.errors import BuildError, InvalidInputError

# Bounds the activations held at once when an evaluation set has many rows.
BATCH_ROWS = 1024

NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "BOOL": np.bool_,
}  # fmt: skip
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})


@dataclass(frozen=True)
class LoadedModel:
    """Model bytes with their onnxruntime session and declared inputs/outputs."""

    model_bytes: bytes
    session: Any
    io: ModelIO

    @property
    def feature_input(self) -> TensorSpec:
        """The single `[batch, features]` input that rows of features are fed to."""
        return feature_input(self.io)


def load_model(model_bytes: bytes) -> LoadedModel:
    """Load `model_bytes` in onnxruntime; InvalidModelError when it does not load."""
    session = open_session(model_bytes)
    return LoadedModel(model_bytes, session, describe_session(session))


def feature_input(io: ModelIO) -> TensorSpec:
    """Return the model's one 2-D numeric input, or explain why rows cannot be fed to it."""
    if len(io.inputs) != 1:
        names = ", ".join(spec.name for spec in io.inputs)
        raise InvalidInputError(
            f"the model takes {len(io.inputs)} inputs ({names}); rows of features can only "
            "be fed to a model with one [batch, features] input"
        )
    spec = io.inputs[0]
    if len(spec.shape) != 2 or spec.datatype not in NUMPY_DTYPES:
        raise InvalidInputError(
            f"the model's input {spec.name!r} is {spec.datatype} {list(spec.shape)}, "
            "not a numeric [batch, features] matrix"
        )
    return spec


def check_rows_fit(io: ModelIO, rows: NDArray[Any], what: str) -> None:
    """Raise InvalidInputError unless `rows` has the feature count the model's input takes."""
    spec = feature_input(io)
    width = spec.shape[1]
    if width != -1 and rows.shape[1] != width:
        raise InvalidInputError(
            f"{what} has {rows.shape[1]} features per row, but the model's input "
            f"{spec.name!r} takes {width}"
        )


def run(model: LoadedModel, feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
    """Run the model once and return every output by name."""
    names = [spec.name for spec in model.io.outputs]
    try:
        values = model.session.run(names, feeds)
    except ORT_ERRORS as e:
        raise BuildError(f"onnxruntime failed to run the model: {ort_failure(e)}") from e
    return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}


def predict_rows(model: LoadedModel, rows: NDArray[Any]) -> dict[str, NDArray[Any]]:
    """Run the model on rows of features in bounded batches; outputs are concatenated."""
    spec = model.feature_input
    if len(rows) == 0:
        raise InvalidInputError("there are no rows to run the model on")
    typed = rows.astype(NUMPY_DTYPES[spec.datatype], copy=False)
    parts = [
        run(model, {spec.name: typed[start : start + BATCH_ROWS]})
        for start in range(0, len(typed), BATCH_ROWS)
    ]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
