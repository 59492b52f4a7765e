"""Small scikit-learn models trained once for the build tests."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning

from model_registry.build import (
    ConvertedModel,
    EvalSet,
    convert_estimator,
)

SEED = 7
DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4", "BOOL": "|b1"}
DECIMAL = re.compile(r"^-?[0-9]+\.[0-9]{4}$")


@dataclass(frozen=True)
class Trained:
    """A fitted estimator, its ONNX conversion and train/eval data."""

    estimator: Any
    converted: ConvertedModel
    train_rows: np.ndarray
    eval_set: EvalSet


def classification(n_features: int = 32, n_samples: int = 600) -> tuple[np.ndarray, ...]:
    x, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=n_features // 2,
        n_classes=3,
        random_state=SEED,
    )
    x = x.astype(np.float32)
    return x[:400], y[:400], x[400:], y[400:]


def train(estimator: Any, data: tuple[np.ndarray, ...]) -> Trained:
    x_train, y_train, x_eval, y_eval = data
    with warnings.catch_warnings():
        # A few epochs are enough here; "did not converge" is expected.
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(x_train, y_train)
    converted = convert_estimator(estimator, x_train)
    return Trained(estimator, converted, x_train, EvalSet.from_arrays(x_eval, y_eval))


def run_model(model_bytes: bytes, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the model on `rows`, by name (float64 rows where it takes doubles)."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    dtype = np.float64 if session.get_inputs()[0].type == "tensor(double)" else np.float32
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": rows.astype(dtype)}), strict=True))


def node_bytes(model_bytes: bytes) -> list[bytes]:
    """The graph's operators, serialized: what a model computes, without its tensor names."""
    return [node.SerializeToString() for node in onnx.load_from_string(model_bytes).graph.node]
