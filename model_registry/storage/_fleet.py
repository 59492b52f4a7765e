"""Devices, device events and telemetry, as steps both backends run (tokens: _tokens).

Each function yields its statements (see `_db`); the caller picks the transaction
(`SQLStorage`), so an error leaves nothing stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from model_registry.errors import ConflictError, InvalidInputError, NotFoundError, UnknownNameError
from model_registry.storage._db import (
    ConstraintViolationError,
    Query,
    Row,
    Steps,
    constraint_error,
    dumps,
    exists,
    from_text,
    loads,
    optional_from_text,
    to_text,
)
from model_registry.storage._history import add_resource_point, reported_interval
from model_registry.storage._points import add_points
from model_registry.storage.base import (
    DUPLICATE,
    STORED,
    UNKNOWN_DEVICE,
    AssignmentUpdate,
    DeviceMessageRecord,
    DeviceRecord,
    DeviceReport,
)

_DEVICE_COLUMNS = (
    "device_id, device_group, created, password_hash, assignment_seq, assignment, assigned,"
    " online, last_seen, state, last_error"
)
# Built from the constant column list above, never from input.
_SELECT_DEVICES = f"SELECT {_DEVICE_COLUMNS} FROM devices"  # noqa: S608
_INSERT_DEVICE = f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"  # noqa: S608
_DEVICE_EXISTS = "SELECT 1 FROM devices WHERE device_id = ?"


def no_device(device_id: str) -> NotFoundError:
    """Return the error for a device that does not exist."""
    return UnknownNameError("device", device_id)


# devices


def add_device(device: DeviceRecord) -> Steps[None]:
    """Store a new device; raises ConflictError if the id exists."""
    d = device
    values = (
        *(d.device_id, d.group, to_text(d.created), d.password_hash, d.assignment_seq),
        *(d.assignment, dumps(d.assigned), d.online, _optional_text(d.last_seen)),
        *(_optional_json(d.state), _optional_json(d.last_error)),
    )
    try:
        yield Query(_INSERT_DEVICE, values)
    except ConstraintViolationError as e:
        raise constraint_error(e, f"device '{d.device_id}' already exists") from e


def get_device(device_id: str) -> Steps[DeviceRecord]:
    """Return one device; raises NotFoundError."""
    result = yield Query(_SELECT_DEVICES + " WHERE device_id = ?", (device_id,))
    row = result.one()
    if row is None:
        raise no_device(device_id)
    return _device(row)


def devices(group: str | None) -> Steps[list[DeviceRecord]]:
    """Return devices, all or of one group, by id."""
    # CAST: PostgreSQL cannot tell the type of a bare NULL parameter.
    result = yield Query(
        _SELECT_DEVICES + " WHERE (CAST(? AS TEXT) IS NULL OR device_group = ?) ORDER BY device_id",
        (group, group),
    )
    return [_device(row) for row in result.rows]


# One conditional update per device, so two writers can never both pass the check.
_SET_ASSIGNMENT = (
    "UPDATE devices SET assignment_seq = ?, assignment = ?, assigned = ?"
    " WHERE device_id = ? AND assignment_seq < ?"
)


def set_assignment(
    device_id: str, seq: int, envelope: bytes, assigned: dict[str, dict[str, Any]]
) -> Steps[None]:
    """Record a device's new assignment; ConflictError unless `seq` grows."""
    result = yield Query(_SET_ASSIGNMENT, (seq, envelope, dumps(assigned), device_id, seq))
    if result.rowcount:
        return
    yield from _refuse_assignments([AssignmentUpdate(device_id, seq, envelope, assigned)])


def set_assignments(updates: Sequence[AssignmentUpdate]) -> Steps[None]:
    """Record many devices' new assignments at once; ConflictError unless every seq grows.

    Meant for one transaction: a refusal raises, and the caller's rollback undoes the rest.
    """
    if len({u.device_id for u in updates}) != len(updates):
        raise InvalidInputError("the assignments name a device twice")
    # In device order, as the ingest locks rows, so concurrent writers cannot deadlock.
    ordered = sorted(updates, key=lambda u: u.device_id)
    rows = [(u.seq, u.envelope, dumps(u.assigned), u.device_id, u.seq) for u in ordered]
    if not rows:
        return
    result = yield Query(_SET_ASSIGNMENT, rows, many=True)
    if result.rowcount != len(rows):
        yield from _refuse_assignments(ordered)


def _refuse_assignments(updates: Sequence[AssignmentUpdate]) -> Steps[None]:
    """Raise for the first update that did not apply: its device is unknown or its seq old."""
    stored: dict[str, tuple[int, bytes | None]] = {}
    ids = [u.device_id for u in updates]
    for start in range(0, len(ids), _IN_CLAUSE_LIMIT):
        chunk = ids[start : start + _IN_CLAUSE_LIMIT]
        marks = ",".join("?" * len(chunk))
        found = yield Query(
            "SELECT device_id, assignment_seq, assignment FROM devices"  # noqa: S608 - only "?"
            f" WHERE device_id IN ({marks})",
            chunk,
        )
        for row in found.rows:
            envelope = row["assignment"]
            stored[row["device_id"]] = (row["assignment_seq"], envelope and bytes(envelope))
    for u in updates:
        if u.device_id not in stored:
            raise no_device(u.device_id)
        seq, envelope = stored[u.device_id]
        if (seq, envelope) != (u.seq, u.envelope):  # this update did not apply
            raise ConflictError(
                f"assignment seq {u.seq} for device '{u.device_id}' does not grow: it is at {seq}"
            )
    raise ConflictError("an assignment was not stored: its device changed meanwhile")


def record_state(
    device_id: str, state: dict[str, Any], online: bool, seen: datetime
) -> Steps[None]:
    """Store a device's latest state message; raises NotFoundError."""
    result = yield Query(
        "UPDATE devices SET state = ?, online = ?, last_seen = ?, telemetry_interval_s = ?"
        " WHERE device_id = ?",
        (dumps(state), online, to_text(seen), reported_interval(state), device_id),
    )
    if result.rowcount == 0:
        raise no_device(device_id)


def set_device_group(device_id: str, group: str) -> Steps[DeviceRecord]:
    """Move a device to `group` and return it; raises NotFoundError."""
    result = yield Query(
        "UPDATE devices SET device_group = ? WHERE device_id = ?", (group, device_id)
    )
    if result.rowcount == 0:
        raise no_device(device_id)
    return (yield from get_device(device_id))


# Everything that refers to a device, children first (the foreign keys need that order).
_DEVICE_ROWS = (
    *("device_events", "telemetry", "version_points", "resource_points", "drift_records"),
    *("deployment_targets", "devices"),
)


def remove_device(device_id: str) -> Steps[None]:
    """Delete a device with its events, telemetry and deployment targets; NotFoundError."""
    # The row lock keeps new messages of the device out until it is gone.
    found = yield Query(_DEVICE_EXISTS, (device_id,), lock="FOR UPDATE")
    if not found.rows:
        raise no_device(device_id)
    for table in _DEVICE_ROWS:
        # The table names are the constants above, never input.
        yield Query(f"DELETE FROM {table} WHERE device_id = ?", (device_id,))  # noqa: S608


def _device(row: Row) -> DeviceRecord:
    assignment = row["assignment"]
    state, last_error = row["state"], row["last_error"]
    return DeviceRecord(
        device_id=row["device_id"],
        group=row["device_group"],
        created=from_text(row["created"]),
        password_hash=row["password_hash"],
        assignment_seq=row["assignment_seq"],
        assignment=None if assignment is None else bytes(assignment),
        assigned=loads(row["assigned"]),
        online=bool(row["online"]),
        last_seen=optional_from_text(row["last_seen"]),
        state=None if state is None else loads(state),
        last_error=None if last_error is None else loads(last_error),
    )


def _optional_text(moment: datetime | None) -> str | None:
    return None if moment is None else to_text(moment)


def _optional_json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else dumps(value)


# device events and telemetry: the same shape in two tables

MessageTable = Literal["device_events", "telemetry"]
# A resent message (same device, msg_epoch and msg_seq) hits a unique index and is skipped.
_INSERT_MESSAGE = (
    "INSERT INTO {table} (device_id, received, body, msg_epoch, msg_seq) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
_SELECT_MESSAGES = (
    "SELECT device_id, received, body FROM {table}"
    " WHERE device_id = ? AND (CAST(? AS TEXT) IS NULL OR received >= ?)"
    " ORDER BY received DESC, {key} DESC LIMIT ?"
)
# The SQL of each table, filled in from these constants only, never from input.
_MESSAGE_SQL = {
    table: (_INSERT_MESSAGE.format(table=table), _SELECT_MESSAGES.format(table=table, key=key))
    for table, key in (("device_events", "event_id"), ("telemetry", "report_id"))
}


def add_message(
    table: MessageTable, device_id: str, received: datetime, body: dict[str, Any]
) -> Steps[None]:
    """Store one event or telemetry report; raises NotFoundError for an unknown device."""
    values = (device_id, to_text(received), dumps(body), None, None)
    try:
        yield Query(_MESSAGE_SQL[table][0], values)
    except ConstraintViolationError as e:
        if e.kind == "foreign_key":
            raise no_device(device_id) from e
        raise


_REPORT_TABLES: dict[str, MessageTable] = {"events": "device_events", "telemetry": "telemetry"}
_IN_CLAUSE_LIMIT = 500  # ids per `IN (...)`, far below SQLite's bound on parameters


def add_reports(reports: Sequence[DeviceReport]) -> Steps[list[str]]:
    """Apply device reports in order; return each one's outcome."""
    known = yield from _known_devices(sorted({r.device_id for r in reports}))
    outcomes = []
    for report in reports:
        if report.device_id in known:
            outcomes.append((yield from _apply_report(report)))
        else:
            outcomes.append(UNKNOWN_DEVICE)
    return outcomes


def _known_devices(device_ids: list[str]) -> Steps[set[str]]:
    known: set[str] = set()
    for start in range(0, len(device_ids), _IN_CLAUSE_LIMIT):
        chunk = device_ids[start : start + _IN_CLAUSE_LIMIT]
        marks = ",".join("?" * len(chunk))
        query = (
            f"SELECT device_id FROM devices WHERE device_id IN ({marks})"  # noqa: S608 - only "?"
            " ORDER BY device_id"
        )
        # The devices' rows are updated below: locking them up front, in one order for every
        # batch, keeps batches of two registries from deadlocking, and removals out.
        result = yield Query(query, chunk, lock="FOR NO KEY UPDATE")
        known.update(row[0] for row in result.rows)
    return known


def _apply_report(report: DeviceReport) -> Steps[str]:
    r, seen = report, to_text(report.received)
    if r.kind == "state":
        if not r.online:  # the broker's will: the device said nothing, so keep what it last did
            yield Query("UPDATE devices SET online = FALSE WHERE device_id = ?", (r.device_id,))
            return STORED
        yield Query(
            "UPDATE devices SET state = ?, online = TRUE, last_seen = ?, telemetry_interval_s = ?"
            " WHERE device_id = ?",
            (dumps(r.body), seen, reported_interval(r.body), r.device_id),
        )
        return STORED
    values = (r.device_id, seen, dumps(r.body), r.msg_epoch, r.msg_seq)
    inserted = yield Query(_MESSAGE_SQL[_REPORT_TABLES[r.kind]][0], values)
    if inserted.rowcount == 0:
        return DUPLICATE
    yield from add_points(r.points)
    if r.resources is not None:  # only with the report itself: a resend adds nothing
        yield from add_resource_point(r.resources)
    yield Query(
        "UPDATE devices SET last_seen = ?, last_error = COALESCE(?, last_error)"
        " WHERE device_id = ?",
        (seen, _optional_json(r.error), r.device_id),
    )
    return STORED


def messages(
    table: MessageTable, device_id: str, limit: int, since: datetime | None
) -> Steps[list[DeviceMessageRecord]]:
    """Return a device's messages received at or after `since`, newest first."""
    if limit < 1:
        raise InvalidInputError(f"limit must be at least 1, not {limit}")
    after = None if since is None else to_text(since)
    result = yield Query(_MESSAGE_SQL[table][1], (device_id, after, after, limit))
    # Only an empty answer needs the second look: was it no messages, or no such device?
    if not result.rows and not (yield from exists(_DEVICE_EXISTS, (device_id,))):
        raise no_device(device_id)
    return [_message(row) for row in result.rows]


def deployment_events(deployment_id: int) -> Steps[list[DeviceMessageRecord]]:
    """Return the events of a deployment's targets since its creation, oldest first."""
    found = yield Query("SELECT created FROM deployments WHERE deployment_id = ?", (deployment_id,))
    created = found.one()
    if created is None:
        raise NotFoundError(f"no deployment {deployment_id}")
    # Times are fixed-width UTC text, so comparing the text compares the moments.
    result = yield Query(
        "SELECT e.device_id, e.received, e.body FROM device_events AS e"
        " JOIN deployment_targets AS t ON t.device_id = e.device_id"
        " WHERE t.deployment_id = ? AND e.received >= ? ORDER BY e.received, e.event_id",
        (deployment_id, created[0]),
    )
    return [_message(row) for row in result.rows]


def _message(row: Row) -> DeviceMessageRecord:
    return DeviceMessageRecord(row["device_id"], from_text(row["received"]), loads(row["body"]))


def prune_telemetry(older_than: datetime) -> Steps[int]:
    """Delete telemetry received before `older_than`; return how many rows went."""
    result = yield Query("DELETE FROM telemetry WHERE received < ?", (to_text(older_than),))
    return result.rowcount


_PRUNE_KEYS: dict[MessageTable, str] = {"device_events": "event_id", "telemetry": "report_id"}


def device_ids() -> Steps[list[str]]:
    """Return every device id, in order."""
    result = yield Query("SELECT device_id FROM devices ORDER BY device_id")
    return [row[0] for row in result.rows]


def prune_messages(
    table: MessageTable, devices: Sequence[str], older_than: datetime, keep: int
) -> Steps[int]:
    """Delete the devices' messages received before `older_than` and all but the newest `keep`.

    Meant for one transaction per slice of devices; each delete walks the (device_id,
    received) index.
    """
    if keep < 1:
        raise InvalidInputError(f"keep must be at least 1, not {keep}")
    key = _PRUNE_KEYS[table]
    # Built from the constant table and key names above, never from input.
    by_age = f"DELETE FROM {table} WHERE device_id = ? AND received < ?"  # noqa: S608
    oldest_kept = (
        f"SELECT received, {key} FROM {table} WHERE device_id = ?"  # noqa: S608
        f" ORDER BY received DESC, {key} DESC LIMIT 1 OFFSET ?"
    )
    by_count = (
        f"DELETE FROM {table} WHERE device_id = ?"  # noqa: S608
        f" AND (received < ? OR (received = ? AND {key} < ?))"
    )
    deleted = 0
    for device_id in devices:
        deleted += (yield Query(by_age, (device_id, to_text(older_than)))).rowcount
        row = (yield Query(oldest_kept, (device_id, keep - 1))).one()
        if row is not None:
            deleted += (yield Query(by_count, (device_id, row[0], row[0], row[1]))).rowcount
    return deleted
