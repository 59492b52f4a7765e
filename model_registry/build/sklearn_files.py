"""The `build-sklearn` command's files: a joblib estimator and an `.npz` sample in, ONNX out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
from numpy.typing import NDArray

from edge_common.files import write_atomic
from model_registry.build.convert import (
    ConversionReport,
    check_fitted_estimator,
    check_sample,
    convert_estimator,
)
from model_registry.build.datasets import check_targets, read_npz
from model_registry.errors import InvalidInputError


def load_estimator(path: str | Path) -> Any:
    """Load a fitted estimator from a joblib file (a pickle: load only files you trust)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    try:
        estimator = joblib.load(path)
    except Exception as e:
        # Unpickling arbitrary bytes can fail with any exception type; all mean the same here.
        raise InvalidInputError(
            f"{path}: not a joblib file of an estimator ({type(e).__name__}: {e})"
        ) from e
    try:
        check_fitted_estimator(estimator)
    except InvalidInputError as e:
        raise InvalidInputError(f"{path}: {e}") from e
    return estimator


def load_sample(path: str | Path, n_features: int) -> NDArray[Any]:
    """Read the sample rows `X` (and check `y` if present) from an `.npz` file."""
    arrays = read_npz(Path(path))
    if "X" not in arrays:
        found = ", ".join(sorted(arrays)) or "none"
        raise InvalidInputError(f"{path}: has no array named 'X' (arrays found: {found})")
    try:
        rows = check_sample(arrays["X"], n_features)
        if "y" in arrays:
            check_targets(arrays["y"], len(rows), "y")
    except InvalidInputError as e:
        raise InvalidInputError(f"{path}: {e}") from e
    return rows


def build_sklearn_file(
    estimator_path: str | Path, sample_path: str | Path, out_path: str | Path
) -> ConversionReport:
    """Convert ESTIMATOR.joblib to ONNX at `out_path`, checked against the sample DATA.npz."""
    estimator = load_estimator(estimator_path)
    rows = load_sample(sample_path, check_fitted_estimator(estimator))
    converted = convert_estimator(estimator, rows)
    write_atomic(Path(out_path), converted.model_bytes, mode=0o644)
    return converted.report
