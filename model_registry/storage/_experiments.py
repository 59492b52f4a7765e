"""Experiments, as steps both backends run (see `_db`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from model_registry.errors import ConflictError, NotFoundError
from model_registry.storage import _fleet
from model_registry.storage._db import Query, Row, Steps, dumps, from_text, loads, to_text
from model_registry.storage.base import AssignmentUpdate, ExperimentRecord

_COLUMNS = (
    "experiment_id, name, model, mode, control, candidate, split_percent, target_kind, target,"
    " device_ids, created, created_by, status, ended, outcome"
)
_SELECT = f"SELECT {_COLUMNS} FROM experiments"  # noqa: S608 - a constant column list
ENDED = ("stopped", "promoted")


def add_experiment(e: ExperimentRecord, assignments: Sequence[AssignmentUpdate]) -> Steps[int]:
    """Store an experiment and the assignments that start it; return its new id."""
    result = yield Query(
        "INSERT INTO experiments (name, model, mode, control, candidate, split_percent,"
        " target_kind, target, device_ids, created, created_by, status)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?) RETURNING experiment_id",
        (
            *(e.name, e.model, e.mode, e.control, e.candidate, e.split_percent),
            *(e.target_kind, e.target, dumps({"ids": list(e.device_ids)})),
            *(to_text(e.created), e.created_by, "running"),
        ),
    )
    yield from _fleet.set_assignments(assignments)
    return int(result.rows[0][0])


def get_experiment(experiment_id: int) -> Steps[ExperimentRecord]:
    """Return one experiment; raises NotFoundError."""
    result = yield Query(_SELECT + " WHERE experiment_id = ?", (experiment_id,))
    row = result.one()
    if row is None:
        raise NotFoundError(f"no experiment {experiment_id}")
    return _record(row)


def experiments(model: str | None) -> Steps[list[ExperimentRecord]]:
    """Return experiments, newest first, all or of one model."""
    result = yield Query(
        _SELECT + " WHERE (CAST(? AS TEXT) IS NULL OR model = ?) ORDER BY experiment_id DESC",
        (model, model),
    )
    return [_record(row) for row in result.rows]


def end_experiment(
    experiment_id: int,
    status: str,
    ended: datetime,
    outcome: str,
    assignments: Sequence[AssignmentUpdate],
) -> Steps[ExperimentRecord]:
    """Mark a running experiment ended, with the assignments that end it."""
    if status not in ENDED:
        raise ValueError(f"an experiment ends as one of {ENDED}, not {status!r}")
    current = yield from get_experiment(experiment_id)
    if current.status != "running":
        raise ConflictError(f"experiment {experiment_id} is {current.status} already")
    yield Query(
        "UPDATE experiments SET status = ?, ended = ?, outcome = ? WHERE experiment_id = ?",
        (status, to_text(ended), outcome, experiment_id),
    )
    yield from _fleet.set_assignments(assignments)
    return (yield from get_experiment(experiment_id))


def _record(row: Row) -> ExperimentRecord:
    return ExperimentRecord(
        experiment_id=row["experiment_id"],
        name=row["name"],
        model=row["model"],
        mode=row["mode"],
        control=row["control"],
        candidate=row["candidate"],
        split_percent=row["split_percent"],
        target_kind=row["target_kind"],
        target=row["target"],
        device_ids=tuple(loads(row["device_ids"])["ids"]),
        created=from_text(row["created"]),
        created_by=row["created_by"],
        status=row["status"],
        ended=None if row["ended"] is None else from_text(row["ended"]),
        outcome=row["outcome"],
    )
