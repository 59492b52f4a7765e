"""Evaluation sets and feature matrices read from `.npz` files, validated with clear errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_registry.build.npz import read_npz_file
from model_registry.errors import InvalidInputError

# Local files (`build-sklearn`, `load_eval_set`) are the operator's own, but read as carefully
# as uploads: only the bound is more generous.
LOCAL_MAX_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class EvalSet:
    """Rows of features `X` (2-D, numeric, finite) and their true labels or targets `y` (1-D)."""

    X: NDArray[Any]
    y: NDArray[Any]

    @classmethod
    def from_arrays(cls, X: Any, y: Any, source: str = "the evaluation set") -> EvalSet:  # noqa: N803
        """Validate `X` and `y` and return them as an evaluation set."""
        features = check_features(X, f"{source}: X")
        targets = check_targets(y, len(features), f"{source}: y")
        return cls(features, targets)


def check_features(X: Any, what: str) -> NDArray[Any]:  # noqa: N803
    """Return `X` as a 2-D finite numeric array with at least one row; InvalidInputError if not."""
    array = np.asarray(X)
    if array.ndim != 2:
        raise InvalidInputError(f"{what} must be a 2-D matrix of rows, got {array.ndim}-D")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise InvalidInputError(f"{what} must hold numbers, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise InvalidInputError(f"{what} must hold real numbers, got dtype {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(f"{what} is empty (shape {list(array.shape)})")
    if not np.all(np.isfinite(array)):
        raise InvalidInputError(f"{what} contains NaN or infinite values")
    return array


def check_targets(y: Any, rows: int, what: str) -> NDArray[Any]:
    """Return `y` as a 1-D array of numbers or strings with `rows` entries."""
    array = np.asarray(y)
    if array.ndim != 1:
        raise InvalidInputError(
            f"{what} must be 1-D (one label or target per row), got {array.ndim}-D"
        )
    if len(array) != rows:
        raise InvalidInputError(f"{what} has {len(array)} entries but X has {rows} rows")
    numeric = np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
    if not (numeric or array.dtype.kind == "U"):
        raise InvalidInputError(f"{what} must hold numbers or strings, got dtype {array.dtype}")
    if numeric and not np.all(np.isfinite(array.astype(np.float64))):
        raise InvalidInputError(f"{what} contains NaN or infinite values")
    return array


def read_npz(path: Path, max_bytes: int = LOCAL_MAX_BYTES) -> dict[str, NDArray[Any]]:
    """Read every array of an `.npz` file (numbers only, no pickles, at most `max_bytes`)."""
    return read_npz_file(path, max_bytes)


def parse_eval_set(arrays: Mapping[str, Any], source: str) -> EvalSet:
    """Build an evaluation set from the arrays of an `.npz` (`X` 2-D, `y` 1-D) named `source`."""
    for key in ("X", "y"):
        if key not in arrays:
            found = ", ".join(sorted(arrays)) or "none"
            raise InvalidInputError(f"{source}: has no array named {key!r} (arrays found: {found})")
    return EvalSet.from_arrays(arrays["X"], arrays["y"], source=source)


def load_eval_set(path: str | Path) -> EvalSet:
    """Read an evaluation set from an `.npz` file holding `X` (2-D) and `y` (1-D)."""
    return parse_eval_set(read_npz(Path(path)), str(path))
