"""The data and the scikit-learn model the story trains."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demokit.common import (
    N_FEATURES,
)

# ------------------------------------------------------------------------------------- model


@dataclass
class Data:
    """The synthetic task: features and labels, split into training and holdout rows."""

    x_train: Any
    y_train: Any
    x_holdout: Any
    y_holdout: Any


def make_data() -> Data:
    """3 classes, 32 features, 16 of them informative: small, but not trivial for an MLP."""
    import numpy as np  # noqa: PLC0415 - heavy imports only where the demo needs them
    from sklearn.datasets import make_classification  # noqa: PLC0415

    features, labels = make_classification(
        n_samples=3000, n_features=N_FEATURES, n_informative=16, n_classes=3, random_state=11
    )
    features = features.astype(np.float32)
    return Data(features[:2400], labels[:2400], features[2400:], labels[2400:])


def train(data: Data, epochs: int, path: Path, start: Any = None) -> tuple[Any, float]:
    """Fit MLPClassifier 32 -> (256, 256) -> 3 (or go on training `start`), save it with joblib.

    Returns the model and its holdout accuracy.
    """
    import copy  # noqa: PLC0415

    import joblib  # noqa: PLC0415
    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415
    from sklearn.neural_network import MLPClassifier  # noqa: PLC0415
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 - installed with scikit-learn

    if start is None:
        model = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=epochs, random_state=11)
    else:  # retraining: v1's weights, `epochs` more passes over the data
        model = copy.deepcopy(start).set_params(warm_start=True, max_iter=epochs)
    # One BLAS thread: with a thread per core, OpenBLAS and OpenMP spin against each other and
    # against the registry and agents on a small machine, and training takes ten times longer.
    with warnings.catch_warnings(), threadpool_limits(1):
        # Few epochs on purpose: "did not converge" is expected here.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(data.x_train, data.y_train)
    joblib.dump(model, path)
    return model, float(model.score(data.x_holdout, data.y_holdout))
