"""Naming the batch dimension, so devices may merge concurrent requests into one run.

Exporters name the first dimension of inputs and outputs independently (skl2onnx and the
quantizer leave outputs with their own symbolic names), and an agent only merges requests when
every input and output provably shares dimension 0. The pipeline checks that the model maps N
rows to N rows, by running it, and only then names dimension 0 `batch` everywhere.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from model_registry.build.runtime import LoadedModel, load_model, run
from model_registry.build.selftest import synthetic_tensor
from model_registry.errors import BuildError, InvalidModelError

BATCH_DIM = "batch"
PROBE_ROWS = (1, 3)


def share_batch_dimension(model: LoadedModel) -> tuple[LoadedModel, str]:
    """Return the model with dimension 0 named `batch` where that is true, and what was done."""
    if not _first_dims_vary(model):
        return model, "not shared: an input or output has a fixed or missing first dimension"
    if not all(_rows_in_equal_rows_out(model, rows) for rows in PROBE_ROWS):
        return model, "not shared: the outputs do not have one row per input row"
    proto = onnx.load_from_string(model.model_bytes)
    for value in (*proto.graph.input, *proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = BATCH_DIM
    renamed = load_model(proto.SerializeToString())
    return replace(renamed, io=model.io), f"shared: dimension 0 of every tensor is {BATCH_DIM!r}"


def _first_dims_vary(model: LoadedModel) -> bool:
    specs = (*model.io.inputs, *model.io.outputs)
    return all(spec.shape and spec.shape[0] == -1 for spec in specs)


def _rows_in_equal_rows_out(model: LoadedModel, rows: int) -> bool:
    rng = np.random.default_rng(rows)
    try:
        feeds = {spec.name: synthetic_tensor(spec, rows, rng) for spec in model.io.inputs}
        outputs = run(model, feeds)
    except (BuildError, InvalidModelError):  # a model this probe cannot run is not batched
        return False
    return all(np.shape(value)[:1] == (rows,) for value in outputs.values())
