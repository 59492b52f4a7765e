"""Triton's model configuration extension: what a served model looks like as a config.pbtxt.

Filled from the model's io schema and the server's batching settings; the same dictionary is
the JSON of `GET /v2/models/{m}/config` and, field by field, the gRPC ModelConfig message.
"""

from __future__ import annotations

from typing import Any

from edge_agent.runtime import LoadedModel
from edge_agent.server.settings import ServerConfig
from edge_protocol import TensorSpec

PLATFORM = "onnxruntime_onnx"  # Triton's name for the platform; metadata says "onnx_onnxv1"
BACKEND = "onnxruntime"
# Triton's config names its types TYPE_*; BYTES is TYPE_STRING there.
CONFIG_TYPES = {"BYTES": "TYPE_STRING"}


def config_type(datatype: str) -> str:
    """The model configuration name of an OIP datatype: FP32 -> TYPE_FP32."""
    return CONFIG_TYPES.get(datatype, f"TYPE_{datatype}")


def _tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    dims = spec.shape[1:] if batched else spec.shape  # Triton leaves the batch dimension out
    return {"name": spec.name, "data_type": config_type(spec.datatype), "dims": list(dims)}


def model_config(model: LoadedModel, config: ServerConfig) -> dict[str, Any]:
    """The Triton model configuration of `model` as this server runs it."""
    batched = model.batchable
    result: dict[str, Any] = {
        "name": model.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        "max_batch_size": config.max_batch_size if batched else 0,
        "input": [_tensor(spec, batched) for spec in model.io.inputs],
        "output": [_tensor(spec, batched) for spec in model.io.outputs],
    }
    if batched:
        delay_us = round(config.max_queue_delay_ms * 1000)
        result["dynamic_batching"] = {"max_queue_delay_microseconds": delay_us}
    return result
