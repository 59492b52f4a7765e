"""Small real scikit-learn models exported to ONNX with skl2onnx, built offline in seconds."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from skl2onnx import to_onnx
from sklearn.base import BaseEstimator
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

ModelKind = Literal["classifier", "regressor"]

# Pinned opsets so the files load on older onnxruntime builds found on edge devices,
# independent of the newest opset the installed onnx package knows.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
RANDOM_STATE = 7
EVAL_FRACTION = 0.25


@dataclass(frozen=True)
class BuiltModel:
    """A fitted estimator, its ONNX export and held-out data to check predictions against."""

    name: str
    kind: ModelKind
    onnx_path: Path
    estimator: Any
    X_eval: np.ndarray[Any, np.dtype[np.float32]]
    y_eval: np.ndarray[Any, Any]
    input_name: str
    output_names: tuple[str, ...]
    n_features: int


@dataclass(frozen=True)
class ModelSet:
    """The models every suite shares: one classifier and one regressor."""

    classifier: BuiltModel
    regressor: BuiltModel


def build_models(directory: Path) -> ModelSet:
    """Train both test models and write their ONNX files into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    return ModelSet(
        classifier=build_classifier(directory / "classifier.onnx"),
        regressor=build_regressor(directory / "regressor.onnx"),
    )


def build_classifier(
    path: Path,
    *,
    n_features: int = 32,
    n_classes: int = 3,
    n_samples: int = 600,
    shuffled_labels: bool = False,
) -> BuiltModel:
    """Train an MLPClassifier on synthetic data and export it to ONNX without ZipMap.

    `shuffled_labels` trains it on the labels in a random order: the same io and the same
    evaluation rows, but a deliberately bad model (an experiment's losing treatment).
    """
    features, labels = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=n_features // 2,
        n_classes=n_classes,
        random_state=RANDOM_STATE,
    )
    split = _split(features, labels)
    classifier = MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=60, random_state=RANDOM_STATE)
    # A few epochs are plenty for a fixture; the "did not converge" warning is expected noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        targets = split.y_train
        if shuffled_labels:
            targets = np.random.default_rng(RANDOM_STATE).permutation(targets)
        classifier.fit(split.X_train, targets)
    # Without ZipMap the probabilities come out as a plain float tensor instead of a
    # list of dicts, which is what an inference server wants to return.
    options = {id(classifier): {"zipmap": False}}
    return _export(classifier, "classifier", path, split, options)


def build_regressor(path: Path, *, n_features: int = 8, n_samples: int = 600) -> BuiltModel:
    """Train a GradientBoostingRegressor on synthetic data and export it to ONNX."""
    features, targets = make_regression(
        n_samples=n_samples, n_features=n_features, noise=0.1, random_state=RANDOM_STATE
    )
    split = _split(features, targets)
    regressor = GradientBoostingRegressor(n_estimators=50, max_depth=3, random_state=RANDOM_STATE)
    regressor.fit(split.X_train, split.y_train)
    return _export(regressor, "regressor", path, split, options=None)


@dataclass(frozen=True)
class _Split:
    """Train/eval partition with float32 features (the dtype ONNX consumers send)."""

    X_train: np.ndarray[Any, np.dtype[np.float32]]
    X_eval: np.ndarray[Any, np.dtype[np.float32]]
    y_train: np.ndarray[Any, Any]
    y_eval: np.ndarray[Any, Any]


def _split(features: np.ndarray[Any, Any], targets: np.ndarray[Any, Any]) -> _Split:
    """Hold out a fixed evaluation fraction and cast features to float32."""
    x_train, x_eval, y_train, y_eval = train_test_split(
        features.astype(np.float32),
        targets,
        test_size=EVAL_FRACTION,
        random_state=RANDOM_STATE,
    )
    return _Split(X_train=x_train, X_eval=x_eval, y_train=y_train, y_eval=y_eval)


def _export(
    estimator: BaseEstimator,
    kind: ModelKind,
    path: Path,
    split: _Split,
    options: dict[int, dict[str, bool]] | None,
) -> BuiltModel:
    """Convert a fitted estimator to ONNX at `path` and describe the result."""
    # Converting from a float32 sample fixes the graph input to float32[None, n_features].
    onnx_model = to_onnx(estimator, split.X_train[:1], options=options, target_opset=TARGET_OPSET)
    path.write_bytes(onnx_model.SerializeToString())
    return BuiltModel(
        name=path.stem,
        kind=kind,
        onnx_path=path,
        estimator=estimator,
        X_eval=split.X_eval,
        y_eval=split.y_eval,
        input_name=onnx_model.graph.input[0].name,
        output_names=tuple(output.name for output in onnx_model.graph.output),
        n_features=split.X_train.shape[1],
    )


def holdout(model: BuiltModel, path: Path) -> Path:
    """The model's held-out rows as an evaluation set (arrays X and y)."""
    np.savez(path, X=model.X_eval, y=model.y_eval)
    return path
