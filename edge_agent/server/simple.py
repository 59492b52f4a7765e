"""The simple form for scripts: `{"instances": [...]}` in, `{"predictions": [...]}` out.

The TF Serving / KServe v1 row format. For a model with one input each instance is one row of
it; with several inputs each instance is an object keyed by input name. Classifiers (an
integer or string label output, optionally with a probability matrix) give
`{"label": ..., "probabilities": [...]}` per row, single-output models give the row's value
(a number when the row holds one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_agent.errors import InvalidRequestError
from edge_agent.runtime.model import Array
from edge_agent.server.oip import InputTensor
from edge_agent.server.tensors import json_to_array
from edge_protocol import ModelIO, TensorSpec

_LABEL_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                          "UINT64", "BYTES"})  # fmt: skip
_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})


def instances_to_tensors(body: Any, io: ModelIO) -> tuple[InputTensor, ...]:
    """Turn a `{"instances": [...]}` body into one tensor per model input."""
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
        hint = ""
        if isinstance(body, dict) and "instances" not in body and "inputs" in body:
            hint = '; a body of "inputs" goes to POST /v2/models/{model}/infer'
        raise InvalidRequestError(f'the body must be a JSON object {{"instances": [...]}}{hint}')
    instances: list[Any] = body["instances"]
    if not instances:
        raise InvalidRequestError("'instances' must hold at least one instance")
    if len(io.inputs) == 1:
        return (_column(instances, io.inputs[0]),)
    names = {spec.name for spec in io.inputs}
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict) or set(instance) != names:
            raise InvalidRequestError(
                f"instances[{index}] must be an object with exactly the inputs "
                + ", ".join(repr(n) for n in sorted(names))
            )
    return tuple(_column([i[spec.name] for i in instances], spec) for spec in io.inputs)


def _column(values: list[Any], spec: TensorSpec) -> InputTensor:
    shape = nested_shape(values)
    array = json_to_array(values, spec.datatype, shape, f"input {spec.name!r}")
    return InputTensor(spec.name, spec.datatype, shape, array)


def nested_shape(values: list[Any]) -> tuple[int, ...]:
    """The shape nested JSON arrays have, following first elements (ragged ones fail later)."""
    shape: list[int] = []
    current: Any = values
    while isinstance(current, list):
        shape.append(len(current))
        if not current:
            break
        current = current[0]
    return tuple(shape)


def predictions(outputs: dict[str, Array], io: ModelIO) -> list[Any]:
    """One prediction per row of the model's outputs."""
    label, probabilities = classifier_outputs(io)
    if label is not None:
        labels = outputs[label].tolist()
        if probabilities is None:
            return [{"label": value} for value in labels]
        rows = outputs[probabilities].tolist()
        return [{"label": v, "probabilities": p} for v, p in zip(labels, rows, strict=True)]
    if len(io.outputs) == 1:
        return [_row_value(row) for row in outputs[io.outputs[0].name]]
    columns = {spec.name: outputs[spec.name] for spec in io.outputs}
    count = len(next(iter(columns.values())))
    return [{name: _row_value(col[i]) for name, col in columns.items()} for i in range(count)]


def classifier_outputs(io: ModelIO) -> tuple[str | None, str | None]:
    """(label output, probabilities output) when the model looks like a classifier."""
    labels = [o for o in io.outputs if o.datatype in _LABEL_TYPES and len(o.shape) == 1]
    probs = [o for o in io.outputs if o.datatype in _FLOAT_TYPES and len(o.shape) == 2]
    if len(labels) == 1 and len(io.outputs) == 1:
        return labels[0].name, None
    if len(labels) == 1 and len(probs) == 1 and len(io.outputs) == 2:
        return labels[0].name, probs[0].name
    return None, None


def _row_value(row: Any) -> Any:
    array = np.asarray(row)  # a row of a 1-D output is a scalar, of a 2-D output a vector
    value = array.tolist()
    if array.ndim == 1 and len(value) == 1:
        return value[0]
    return value
