"""Per-input feature summaries of one interval: count, mean, std, min, max per column.

docs/telemetry.md, "Per-input feature summaries", describes the fields and how they merge.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_agent.runtime.model import Array

MAX_FEATURES = 64  # columns summarized per input: the first ones of each flattened row
MERGE_ROWS = 64  # rows of requests kept before they are merged into a summary


class FeatureSummary:
    """Per-column statistics of one numeric input over one interval, merged block by block.

    Means and variances merge with Chan et al.'s parallel formula, which stays accurate where
    sum-of-squares cancels. Non-finite values are counted apart and left out of the rest.
    Requests are kept (their summarized columns, as float64) until MERGE_ROWS rows have come
    and then merged as one block: the dozen numpy passes of a merge cost the same for one row
    as for sixty-four, and most requests on a device are one row.
    """

    def __init__(self) -> None:
        self.rows = 0
        self.features = 0  # columns per row of the tensor, before the cap
        # count, mean, m2 (sum of squared deviations), min, max, nan, inf: one array each
        self._stats: dict[str, Array] = {}
        self._width = 0  # columns summarized; a dynamic dimension may narrow it
        self._pending: list[Array] = []
        self._pending_rows = 0

    @staticmethod
    def accepts(value: Any) -> bool:
        """Whether `value` is a numeric tensor (integers or floats; not bool, not bytes)."""
        return isinstance(value, np.ndarray) and value.dtype.kind in "iuf"

    def add(self, value: Array) -> None:
        """Count one request's tensor: dimension 0 is rows, the rest is flattened to columns."""
        rows = value.shape[0] if value.ndim else 1
        if rows == 0:
            return
        matrix = value.reshape(rows, -1)
        if not self.rows:
            self.features = matrix.shape[1]
            self._width = min(matrix.shape[1], MAX_FEATURES)
            self._stats = _batch_stats(np.zeros((0, self._width)))
        if matrix.shape[1] < self._width:
            self._merge_pending()
            self._width = matrix.shape[1]
        self._pending.append(matrix[:, : self._width].astype(np.float64))
        self._pending_rows += rows
        self.rows += rows
        if self._pending_rows >= MERGE_ROWS:
            self._merge_pending()

    def _merge_pending(self) -> None:
        if not self._pending:
            return
        block = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending, self._pending_rows = [], 0
        width = block.shape[1]
        old = {key: column[:width] for key, column in self._stats.items()}
        new = _batch_stats(block)
        total = old["count"] + new["count"]
        share = np.divide(new["count"], total, out=np.zeros(width), where=total > 0)
        delta = new["mean"] - old["mean"]
        self._stats = {
            "count": total,
            "mean": old["mean"] + delta * share,
            "m2": old["m2"] + new["m2"] + np.square(delta) * old["count"] * share,
            "min": np.minimum(old["min"], new["min"]),
            "max": np.maximum(old["max"], new["max"]),
            "nan": old["nan"] + new["nan"],
            "inf": old["inf"] + new["inf"],
        }

    def to_dict(self) -> dict[str, Any]:
        """The report entry: one list per statistic, one element per summarized column."""
        self._merge_pending()
        stats = self._stats
        count = stats["count"]
        seen = count > 0
        variance = np.divide(stats["m2"], count, out=np.zeros_like(count), where=seen)
        return {
            "rows": self.rows,
            "features": self.features,
            "summarized": len(count),
            "count": count.astype(np.int64).tolist(),
            "mean": _column(stats["mean"], seen),
            "std": _column(np.sqrt(variance), seen),
            "min": _column(stats["min"], seen),
            "max": _column(stats["max"], seen),
            "nan_count": stats["nan"].tolist(),
            "inf_count": stats["inf"].tolist(),
        }


def _batch_stats(matrix: Array) -> dict[str, Array]:
    """The per-column statistics of one request's rows (vectorized; empty rows give zeros)."""
    x = np.asarray(matrix, dtype=np.float64)
    finite, nan = np.isfinite(x), np.isnan(x)
    count = finite.sum(axis=0).astype(np.float64)
    total = np.where(finite, x, 0.0).sum(axis=0)
    mean = np.divide(total, count, out=np.zeros_like(count), where=count > 0)
    return {
        "count": count,
        "mean": mean,
        "m2": np.square(np.where(finite, x - mean, 0.0)).sum(axis=0),
        "min": np.where(finite, x, np.inf).min(axis=0, initial=np.inf),
        "max": np.where(finite, x, -np.inf).max(axis=0, initial=-np.inf),
        "nan": nan.sum(axis=0),
        "inf": (~finite & ~nan).sum(axis=0),
    }


def _column(values: Array, seen: Array) -> list[float | None]:
    """Seven significant digits (float32 precision); None where a column had no finite value."""
    return [
        float(f"{v:.7g}") if ok else None
        for v, ok in zip(values.tolist(), seen.tolist(), strict=True)
    ]
