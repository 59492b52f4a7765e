"""The one onnxruntime session every peer uses: CPU provider, 1 intra-op and 1 inter-op thread."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

THREADS = 1  # the agent's default (`runtime.intra_op_threads` = 1)
DATATYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
}


def session(path: str) -> Any:
    """An InferenceSession configured like the agent's."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = THREADS
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
