"""Per-variant outcomes of an experiment over one telemetry interval.

They go upstream as the `experiment` object of `models.{m}.versions.{v}` (docs/telemetry.md):
counts and sums only, the same keys every time, so the registry adds up devices and intervals
by summing them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class VariantCounts:
    """One variant's numbers since the last report."""

    answered: int = 0  # requests it answered inside the experiment (a shadow: 0)
    feedback_labels: int = 0  # rows with a true label from feedback (classifiers)
    feedback_correct: int = 0  # of those, rows where the variant's label was the true one
    feedback_values: int = 0  # rows with a true value (regressors)
    feedback_abs_error_sum: float = 0.0  # sum of |predicted - true| over those rows
    feedback_abs_error_sq_sum: float = 0.0  # sum of its squares (the registry's variance)
    shadow_runs: int = 0  # requests the shadow ran
    shadow_failed: int = 0  # of those, runs that raised
    shadow_dropped: int = 0  # requests the shadow skipped because its queue was full
    shadow_labels: int = 0  # rows whose label was compared with the control's
    shadow_agreed: int = 0  # of those, rows where both gave the same label
    shadow_values: int = 0  # rows whose value was compared with the control's
    shadow_abs_diff_sum: float = 0.0  # sum of |shadow - control| over those rows
    shadow_abs_diff_sq_sum: float = 0.0  # sum of its squares

    def reset(self) -> None:
        """Every count back to zero."""
        for f in fields(self):
            setattr(self, f.name, f.default)

    def to_dict(self) -> dict[str, Any]:
        """The wire object: feedback and shadow numbers in two sub-objects."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {
            "answered": values.pop("answered"),
            "feedback": {k[9:]: _round(v) for k, v in values.items() if k.startswith("feedback_")},
            "shadow": {k[7:]: _round(v) for k, v in values.items() if k.startswith("shadow_")},
        }


def _round(value: float) -> float:
    return value if isinstance(value, int) else float(f"{value:.9g}")


class ExperimentCounters:
    """VariantCounts by (model, version), drained at every report.

    Each variant's counts stay one object from its first count on, so the request path adds
    to a field of an object it already holds (`variant`), not a locked lookup per answer:
    everything that counts or drains runs on the event loop's thread (answers, feedback, the
    shadow's worker, the telemetry report). A drain reports the variants that counted
    something and sets them back to zero in place.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], VariantCounts] = {}
        self._ended: set[tuple[str, int]] = set()  # forgotten once their last counts are out

    def variant(self, model: str, version: int) -> VariantCounts:
        """The variant's counts, to add to (made on first use; kept until it has ended)."""
        key = (model, version)
        self._ended.discard(key)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = VariantCounts()
        return counts

    def update(self, model: str, version: int, **increments: float) -> None:
        """Add `increments` (field name -> amount) to the variant's counts."""
        counts = self.variant(model, version)
        for name, amount in increments.items():
            setattr(counts, name, getattr(counts, name) + amount)

    def end(self, model: str, version: int) -> None:
        """The variant counts no more (its experiment ended): forget it after the next drain."""
        if (model, version) in self._counts:
            self._ended.add((model, version))

    def drain(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every variant's wire object, by (model, version as text); counting starts again."""
        drained = {}
        for (model, version), counts in self._counts.items():
            if counts != ZERO:
                drained[model, str(version)] = counts.to_dict()
                counts.reset()  # the same object: the request path holds it
        for key in self._ended:
            del self._counts[key]
        self._ended.clear()
        return drained

    def report(self) -> dict[tuple[str, str], dict[str, Any]]:
        """`drain`, as the `experiment` field of each version's telemetry entry."""
        return {key: {"experiment": counts} for key, counts in self.drain().items()}


ZERO = VariantCounts()
