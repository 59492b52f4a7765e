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
from model_registry.file_kinds import PICKLED_KINDS, TEXT_SAMPLE_BYTES, non_onnx_kind


def load_estimator(path: str | Path) -> Any:
    """Load a fitted estimator from a joblib file (a pickle: load only files you trust)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    try:
        estimator = joblib.load(path)
    except Exception as e:
        # Unpickling arbitrary bytes can fail with any exception type; all mean the same here,
        # and the file's first bytes usually say better what it is than the unpickler's words.
        raise InvalidInputError(
            f"{path}: not a joblib file of an estimator ({_what_it_is(path, e)})"
        ) from e
    try:
        check_fitted_estimator(estimator)
    except InvalidInputError as e:
        raise InvalidInputError(f"{path}: {e}") from e
    return estimator


def _what_it_is(path: Path, error: Exception) -> str:
    with path.open("rb") as handle:
        head = handle.read(TEXT_SAMPLE_BYTES)
    kind = non_onnx_kind(head)
    if kind is None and _is_onnx(path):
        return f"it is an ONNX model already: push it with model-registry push {path} --name NAME"
    if kind is not None and kind not in PICKLED_KINDS:
        return f"it looks like {kind.split(' (', 1)[0]}"  # the rest is advice for push
    return f"{type(error).__name__}: {error}"


def _is_onnx(path: Path) -> bool:
    import onnx  # noqa: PLC0415 - only when the file is not a joblib file

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf refuses garbage with several exception types
        return False
    return len(model.graph.node) > 0


def check_output(path: Path) -> None:
    """`-o` must name a file in an existing directory, before anything is converted."""
    if path.is_dir():
        raise InvalidInputError(f"-o {path}: is a directory; name the .onnx file to write")
    if not path.parent.is_dir():
        raise InvalidInputError(f"-o {path}: the directory {path.parent} does not exist")


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
    check_output(Path(out_path))
    estimator = load_estimator(estimator_path)
    rows = load_sample(sample_path, check_fitted_estimator(estimator))
    converted = convert_estimator(estimator, rows)
    write_atomic(Path(out_path), converted.model_bytes, mode=0o644)
    return converted.report
