"""The model runtime: onnxruntime sessions, the serving set with atomic swap, batching.

Transport-free: nothing here knows about HTTP. Blocking onnxruntime work is done by callers
through an executor (the batcher does it for requests).
"""

from edge_agent.runtime.batching import Batcher, BatchPolicy, BatchResult
from edge_agent.runtime.iospec import derive_io, oip_datatype, oip_shape, shares_batch_axis
from edge_agent.runtime.model import LoadedModel, create_session, example_input, load_model
from edge_agent.runtime.options import RuntimeOptions
from edge_agent.runtime.repository import ModelRepository, RepositoryListener

__all__ = [
    "BatchPolicy",
    "BatchResult",
    "Batcher",
    "LoadedModel",
    "ModelRepository",
    "RepositoryListener",
    "RuntimeOptions",
    "create_session",
    "derive_io",
    "example_input",
    "load_model",
    "oip_datatype",
    "oip_shape",
    "shares_batch_axis",
]
