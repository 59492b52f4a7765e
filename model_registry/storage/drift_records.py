"""The records of drift watching (services/drift_watch.py), as `Storage` stores them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class DriftRecord:
    """A change of the drift status of one feature of a model version (docs/registry.md).

    `kind` is "drift_alert" when the status rose (ok < warn < alert) and "drift_cleared" when it
    fell; `device_id` None is the fleet-wide status. The numbers are those of the window that
    changed it.
    """

    model: str
    version: int
    device_id: str | None
    feature: str  # "X[3]" (input X, column 3) or "predictions"
    kind: str
    status: str
    previous: str
    at: datetime
    psi: float | None
    max_cdf_gap: float | None
    samples: int
    record_id: int = 0  # given by the storage
