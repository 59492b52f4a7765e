"""The reference profile of a release: quantile bins of each input column and the outputs.

Computed at push from the evaluation set, or from the reference rows given instead
(`push --reference`), on the artifact devices will run, so the predictions it counts are the
ones devices will make. Devices count what they serve in the same bins; the registry compares
the two (docs/registry.md, "Drift"). The format is edge_protocol.profile's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_protocol import Bins, InputProfile, OutputProfile, Profile
from edge_protocol.profile import MAX_BINS, MAX_CLASS_LABEL, MAX_CLASSES, MAX_PROFILE_COLUMNS
from model_registry.build.evaluate import LABEL_DATATYPES
from model_registry.build.runtime import FLOAT_DATATYPES, LoadedModel, predict_rows
from model_registry.errors import InvalidInputError

DEFAULT_BINS = 10
# Below this many rows the quantiles of a column are mostly noise; a profile is still made,
# but the bins are as many as the rows allow.
MIN_ROWS = 20


def make_profile(model: LoadedModel, rows: NDArray[Any], bins: int = DEFAULT_BINS) -> Profile:
    """The profile of `rows` (2-D, finite, as checked for the model's one feature input)."""
    if not 2 <= bins <= MAX_BINS:
        raise InvalidInputError(f"a profile has 2 to {MAX_BINS} bins per column, not {bins}")
    if len(rows) < MIN_ROWS:
        raise InvalidInputError(
            f"the reference rows are {len(rows)}; a drift profile needs at least {MIN_ROWS}"
        )
    spec = model.feature_input
    matrix = np.asarray(rows, dtype=np.float64)[:, :MAX_PROFILE_COLUMNS]
    columns = tuple(column_bins(matrix[:, i], bins) for i in range(matrix.shape[1]))
    outputs = predict_rows(model, rows)
    output = output_profile(model, outputs, bins)
    return Profile(len(rows), {spec.name: InputProfile(columns)}, output)


def column_bins(values: NDArray[Any], bins: int) -> Bins:
    """Quantile edges of `values` (ties merged, so a column of few values gets fewer bins)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return Bins((), (0,))
    quantiles = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    # Edges strictly inside the range: an edge at the minimum would leave bin 0 empty.
    edges = [float(e) for e in np.unique(np.quantile(finite, quantiles)) if e > finite.min()]
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=len(edges) + 1)
    return Bins(tuple(edges), tuple(int(c) for c in counts))


def output_profile(
    model: LoadedModel, outputs: dict[str, NDArray[Any]], bins: int
) -> OutputProfile | None:
    """Class counts of the first label output, else bins of the first float output's first
    column; None for a model with neither (or more classes than a profile holds)."""
    specs = model.io.outputs
    labels = [s.name for s in specs if s.datatype in LABEL_DATATYPES]
    if labels:
        values = [str(v) for v in np.asarray(outputs[labels[0]]).reshape(-1).tolist()]
        names, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
        if len(names) > MAX_CLASSES or any(len(n) > MAX_CLASS_LABEL for n in names):
            return None
        classes = dict(zip(names.tolist(), counts.tolist(), strict=True))
        return OutputProfile(labels[0], classes=classes)
    floats = [s.name for s in specs if s.datatype in FLOAT_DATATYPES]
    if not floats:
        return None
    value = np.asarray(outputs[floats[0]], dtype=np.float64)
    first = value.reshape(value.shape[0], -1)[:, 0] if value.ndim else value.reshape(1)
    return OutputProfile(floats[0], bins=column_bins(first, bins))
