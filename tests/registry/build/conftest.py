"""The trained models and their builds, shared by the build tests (one training per module)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_regression
from sklearn.ensemble import RandomForestClassifier
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from model_registry.build import (
    BuildResult,
    build,
)
from tests.registry.build.trained import SEED, Trained, classification, train


@pytest.fixture(scope="module")
def mlp() -> Trained:
    """The issue's model: 32 features -> 256 -> 256 -> 3 classes."""
    model = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=10, random_state=SEED)
    return train(model, classification())


@pytest.fixture(scope="module")
def mlp_int8(mlp: Trained) -> BuildResult:
    """The MLP quantized dynamically and gated on its evaluation set."""
    return build(
        mlp.converted.model_bytes,
        quantize="int8",
        eval_set=mlp.eval_set,
        source="sklearn",
        conversion=mlp.converted.report,
    )


@pytest.fixture(scope="module")
def mlp_static(mlp: Trained) -> BuildResult:
    """The MLP quantized statically (QDQ) with calibration rows from its training data."""
    return build(
        mlp.converted.model_bytes,
        quantize="int8",
        eval_set=mlp.eval_set,
        calibration=mlp.train_rows[:128],
    )


@pytest.fixture(scope="module")
def regressor() -> Trained:
    """A scaled MLP regressor: an ML-domain Scaler op followed by MatMul layers."""
    x, y = make_regression(n_samples=500, n_features=8, noise=5.0, random_state=SEED)
    model = make_pipeline(
        StandardScaler(), MLPRegressor(hidden_layer_sizes=(64, 64), max_iter=300, random_state=SEED)
    )
    x = x.astype(np.float32)
    return train(model, (x[:400], y[:400], x[400:], y[400:]))


@pytest.fixture(scope="module")
def forest() -> Trained:
    """A random forest: TreeEnsembleClassifier, nothing to quantize."""
    return train(RandomForestClassifier(n_estimators=20, random_state=SEED), classification())


@pytest.fixture(scope="module")
def forest_build(forest: Trained) -> BuildResult:
    """The forest built without an evaluation set: synthetic self-test rows."""
    return build(forest.converted.model_bytes, quantize="int8")


@pytest.fixture(scope="module")
def regressor_build(regressor: Trained) -> BuildResult:
    """The regressor quantized without an evaluation set."""
    return build(regressor.converted.model_bytes, quantize="int8")
