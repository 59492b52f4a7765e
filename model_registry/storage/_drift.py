"""Drift records: changes of the drift status of model versions, as steps both backends run.

The fleet-wide status is stored with device_id '' (a key column cannot hold a NULL that
compares equal to itself); the records read back say None.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from model_registry.storage._db import Query, Row, Steps, from_text, to_text
from model_registry.storage.base import DriftRecord

_COLUMNS = (
    "record_id, model, version, device_id, feature, kind, status, previous, at, psi,"
    " max_cdf_gap, samples"
)
_INSERT = (
    "INSERT INTO drift_records (model, version, device_id, feature, kind, status, previous,"
    " at, psi, max_cdf_gap, samples) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_FLEET = ""


def add_records(records: Sequence[DriftRecord]) -> Steps[None]:
    """Insert drift records."""
    if records:
        yield Query(_INSERT, [_values(r) for r in records], many=True)


def records(model: str, limit: int) -> Steps[list[DriftRecord]]:
    """A model's newest `limit` records, newest first."""
    sql = f"SELECT {_COLUMNS} FROM drift_records WHERE model = ? ORDER BY record_id DESC LIMIT ?"  # noqa: S608 - constants
    result = yield Query(sql, (model, limit))
    return [_record(row) for row in result.rows]


def statuses(model: str) -> Steps[list[DriftRecord]]:
    """The latest record of each (version, device, feature) of a model."""
    sql = (
        f"SELECT {_COLUMNS} FROM drift_records WHERE record_id IN ("  # noqa: S608 - constants
        " SELECT MAX(record_id) FROM drift_records WHERE model = ?"
        " GROUP BY version, device_id, feature) ORDER BY record_id"
    )
    result = yield Query(sql, (model,))
    return [_record(row) for row in result.rows]


def _values(r: DriftRecord) -> tuple[object, ...]:
    return (
        r.model, r.version, r.device_id or _FLEET, r.feature, r.kind, r.status, r.previous,
        to_text(r.at), r.psi, r.max_cdf_gap, r.samples,
    )  # fmt: skip


def _record(row: Row) -> DriftRecord:
    return DriftRecord(
        model=row["model"],
        version=int(row["version"]),
        device_id=row["device_id"] or None,
        feature=row["feature"],
        kind=row["kind"],
        status=row["status"],
        previous=row["previous"],
        at=from_text(row["at"]),
        psi=None if row["psi"] is None else float(row["psi"]),
        max_cdf_gap=None if row["max_cdf_gap"] is None else float(row["max_cdf_gap"]),
        samples=int(row["samples"]),
        record_id=int(row["record_id"]),
    )


def prune_records(older_than: datetime) -> Steps[int]:
    """Delete records older than `older_than` but each key's latest (its current status)."""
    result = yield Query(
        "DELETE FROM drift_records WHERE at < ? AND record_id NOT IN ("
        " SELECT MAX(record_id) FROM drift_records GROUP BY model, version, device_id, feature)",
        (to_text(older_than),),
    )
    return result.rowcount
