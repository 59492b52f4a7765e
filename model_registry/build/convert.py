"""Fitted scikit-learn estimators to ONNX: no ZipMap, float32 input "input", pinned opsets.

Tree ensembles get one more check. skl2onnx already adjusts float32 thresholds so that a tree
fed float32 values decides exactly as scikit-learn does (scikit-learn itself casts rows to float32
before a tree). What float32 cannot reproduce is the arithmetic *before* the tree: a scaler or
other transformer that scikit-learn runs in float64 lands a hair away in float32 and crosses a
threshold. When that flips a prediction on the sample data, the model is converted again in
double precision: a float64 input, the transformers in float64, and a cast to float32 right
before the trees, which is what scikit-learn does. (skl2onnx's plain float64 tree output is no
alternative: it declares double outputs for TreeEnsemble* ops that onnxruntime refuses to load,
sklearn-onnx issue #1074.)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
from skl2onnx.common.exceptions import MissingConverter, MissingShapeCalculator
from skl2onnx.sklapi import CastTransformer
from sklearn.base import BaseEstimator, is_classifier
from sklearn.ensemble import (
    BaseEnsemble,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
)
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.tree import BaseDecisionTree
from sklearn.utils.validation import check_is_fitted

from model_registry.build.datasets import check_features
from model_registry.build.inspect import ORT_ERRORS, open_session, ort_failure
from model_registry.build.opsets import normalise_opset_imports
from model_registry.errors import BuildError, InvalidInputError

# Older onnxruntime builds on devices (>= 1.19) load these; newer opsets would not help here.
DEFAULT_TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
INPUT_NAME = "input"
# A regression prediction "flips" when it moves more than this fraction of the predictions'
# scale: far above float32 rounding of summed leaves (~1e-6), far below a changed leaf.
REGRESSION_FLIP_RTOL = 1e-4
_TREE_TYPES = (
    BaseDecisionTree,
    BaseEnsemble,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
)


@dataclass(frozen=True)
class ConversionReport:
    """How an estimator was converted and how its ONNX predictions compare on the sample."""

    estimator: str
    n_features: int
    sample_rows: int
    precision: str  # "float32" or "float64": the model input's element type
    tree_ensemble: bool
    mismatches_float32: int | None = None  # None when not compared (not a tree ensemble)
    mismatches_float64: int | None = None  # None when the float64 variant was not needed
    float64_error: str | None = None  # why the float64 variant could not be built, if it failed
    target_opset: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TARGET_OPSET))

    def to_dict(self) -> dict[str, Any]:
        """Return the report as canonical-JSON-safe values (integers and strings only)."""
        result: dict[str, Any] = {
            "estimator": self.estimator,
            "n_features": self.n_features,
            "sample_rows": self.sample_rows,
            "precision": self.precision,
            "tree_ensemble": self.tree_ensemble,
            "target_opset": {domain or "ai.onnx": v for domain, v in self.target_opset.items()},
        }
        for key in ("mismatches_float32", "mismatches_float64", "float64_error"):
            if getattr(self, key) is not None:
                result[key] = getattr(self, key)
        return result

    def summary(self) -> str:
        """Return one line for a person: what was converted and how it compares."""
        head = f"{self.estimator}, {self.n_features} features, {self.precision} input"
        if self.mismatches_float32 is None:
            return head
        chosen = self.mismatches_float64 if self.precision == "float64" else self.mismatches_float32
        if self.mismatches_float64 is None or self.precision == "float32":
            return f"{head}; {chosen} of {self.sample_rows} sample predictions differ"
        return (
            f"{head} (float32 changed {self.mismatches_float32} of {self.sample_rows} sample "
            f"predictions, float64 changes {chosen})"
        )


@dataclass(frozen=True)
class ConvertedModel:
    """The serialized ONNX model and the report of its conversion."""

    model_bytes: bytes
    report: ConversionReport


def convert_estimator(
    estimator: Any, sample: Any, *, target_opset: dict[str, int] | None = None
) -> ConvertedModel:
    """Convert a fitted estimator to ONNX, in double precision where float32 flips predictions."""
    opset = dict(DEFAULT_TARGET_OPSET if target_opset is None else target_opset)
    n_features = check_fitted_estimator(estimator)
    rows = check_sample(sample, n_features)
    model32 = to_onnx_model(estimator, n_features, np.float32, opset)
    report = ConversionReport(
        describe(estimator), n_features, len(rows), "float32", is_tree_ensemble(estimator),
        target_opset=opset,
    )  # fmt: skip
    if not report.tree_ensemble:
        return ConvertedModel(finalize(model32), report)
    flips32 = count_mismatches(estimator, model32, rows)
    report = replace(report, mismatches_float32=flips32)
    if flips32 == 0:
        return ConvertedModel(finalize(model32), report)
    try:
        model64 = to_onnx_model(with_float32_cast(estimator), n_features, np.float64, opset)
        flips64 = count_mismatches(estimator, model64, rows)
    except (BuildError, InvalidInputError) as e:
        # The float32 model works; a converter without a float64 path must not sink it.
        return ConvertedModel(finalize(model32), replace(report, float64_error=str(e)))
    report = replace(report, mismatches_float64=flips64)
    if flips64 < flips32:
        return ConvertedModel(finalize(model64), replace(report, precision="float64"))
    return ConvertedModel(finalize(model32), report)


def check_fitted_estimator(estimator: Any) -> int:
    """Return the estimator's feature count, or raise InvalidInputError if it is not fitted."""
    if not isinstance(estimator, BaseEstimator):
        raise InvalidInputError(f"a {type(estimator).__name__} is not a scikit-learn estimator")
    try:
        check_is_fitted(estimator)
    except NotFittedError as e:
        raise InvalidInputError(f"the {type(estimator).__name__} is not fitted") from e
    n_features = getattr(estimator, "n_features_in_", None)
    if not isinstance(n_features, int) or n_features < 1:
        raise InvalidInputError(
            f"the {type(estimator).__name__} does not say how many features it takes "
            "(no n_features_in_): it cannot be given a fixed input shape"
        )
    return n_features


def check_sample(sample: Any, n_features: int) -> NDArray[Any]:
    """Validate the sample rows used to compare predictions; InvalidInputError when unusable."""
    rows = check_features(sample, "the sample data X")
    if rows.shape[1] != n_features:
        raise InvalidInputError(
            f"the sample data X has {rows.shape[1]} features per row, "
            f"but the estimator was fitted on {n_features}"
        )
    return rows


def is_tree_ensemble(estimator: Any) -> bool:
    """Return whether the estimator (or a pipeline's last step) is a tree model."""
    return isinstance(final_step(estimator), _TREE_TYPES)


def describe(estimator: Any) -> str:
    """Name the estimator for reports: `Pipeline(StandardScaler, DecisionTreeClassifier)`."""
    if isinstance(estimator, Pipeline):
        return f"Pipeline({', '.join(describe(step) for _, step in estimator.steps)})"
    # A pipeline step may be the string "passthrough" (or None) instead of an estimator.
    return (
        str(estimator)
        if estimator is None or isinstance(estimator, str)
        else type(estimator).__name__
    )


def final_step(estimator: Any) -> Any:
    """Return the estimator that makes the predictions (a pipeline's last step, recursively)."""
    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[-1][1]
    return estimator


def with_float32_cast(estimator: Any) -> Pipeline:
    """Return a pipeline that casts to float32 just before the final (tree) step."""
    cast = ("cast_float32_for_trees", CastTransformer(dtype=np.float32))
    if isinstance(estimator, Pipeline):
        return Pipeline([*estimator.steps[:-1], cast, estimator.steps[-1]])
    return Pipeline([cast, ("model", estimator)])


def to_onnx_model(
    estimator: Any, n_features: int, dtype: type[np.floating[Any]], opset: dict[str, int]
) -> onnx.ModelProto:
    """Run skl2onnx with a `[None, n_features]` input named "input" and no ZipMap."""
    tensor_type = FloatTensorType if dtype is np.float32 else DoubleTensorType
    final = final_step(estimator)
    options = {id(final): {"zipmap": False}} if is_classifier(final) else None
    try:
        model = convert_sklearn(
            estimator,
            initial_types=[(INPUT_NAME, tensor_type([None, n_features]))],
            options=options,
            target_opset=opset,
        )
    except (MissingConverter, MissingShapeCalculator) as e:
        name = type(estimator).__name__
        raise InvalidInputError(f"skl2onnx has no converter for {name}: {e}") from e
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as e:
        # skl2onnx converters fail with whatever their internals raise; none is our input's fault.
        raise BuildError(f"skl2onnx failed to convert the {type(estimator).__name__}: {e}") from e
    return normalise_opset_imports(model)


def count_mismatches(estimator: Any, model: onnx.ModelProto, rows: NDArray[Any]) -> int:
    """Count the sample rows where the ONNX model's prediction differs from the estimator's."""
    session = open_session(model.SerializeToString())
    dtype = np.float32 if session.get_inputs()[0].type == "tensor(float)" else np.float64
    try:
        onnx_pred = np.asarray(session.run(None, {INPUT_NAME: rows.astype(dtype)})[0])
    except ORT_ERRORS as e:
        raise BuildError(f"the converted model does not run: {ort_failure(e)}") from e
    expected = np.asarray(estimator.predict(rows))
    if is_classifier(final_step(estimator)):
        return int(np.count_nonzero(onnx_pred.ravel() != expected.ravel()))
    got, want = onnx_pred.reshape(len(rows), -1), expected.reshape(len(rows), -1)
    scale = max(1.0, float(np.max(np.abs(want))))
    far = np.abs(got.astype(np.float64) - want) > REGRESSION_FLIP_RTOL * scale
    return int(np.count_nonzero(np.any(far, axis=1)))


def finalize(model: onnx.ModelProto) -> bytes:
    """Check the model with onnx.checker and serialize it."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise BuildError(f"skl2onnx produced an invalid ONNX model: {e}") from e
    return bytes(model.SerializeToString())
