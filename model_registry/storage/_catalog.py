"""Synchronous SQLite operations on roots, models, releases and deployments.

Each function takes the connection and runs on the storage's worker thread; every write is one
transaction, so an error leaves nothing stored.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from model_registry.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
    UnknownNameError,
)
from model_registry.storage._db import (
    constraint_error,
    dumps,
    exists,
    from_text,
    is_foreign_key,
    loads,
    to_text,
    transaction,
)
from model_registry.storage.base import DeploymentRecord, ModelSummary, ReleaseRecord

_RELEASE_COLUMNS = "model, version, label, sha256, size, created, expires, envelope, build"
_DEPLOYMENT_COLUMNS = (
    "deployment_id, model, version, kind, target_kind, target, created, deadline, created_by,"
    " idempotency_key, request_digest"
)
# Built from the constant column lists above, never from input.
_INSERT_RELEASE = f"INSERT INTO releases ({_RELEASE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"  # noqa: S608
_SELECT_RELEASES = f"SELECT {_RELEASE_COLUMNS} FROM releases"  # noqa: S608
_SELECT_DEPLOYMENTS = f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments"  # noqa: S608


def missing_release(conn: sqlite3.Connection, model: str, version: int) -> NotFoundError:
    """The error for a missing release: no such model at all, or no such version of it."""
    latest = latest_version(conn, model)
    if latest == 0:
        return UnknownNameError("model", model)
    return NotFoundError(f"model '{model}' has no version {version} (its latest is {latest})")


# roots


def add_root(conn: sqlite3.Connection, version: int, envelope: bytes) -> None:
    """Store root `version`; raises ConflictError if it is stored already."""
    with transaction(conn):
        try:
            conn.execute("INSERT INTO roots (version, envelope) VALUES (?, ?)", (version, envelope))
        except sqlite3.IntegrityError as e:
            raise constraint_error(e, f"root version {version} is already stored") from e


def roots(conn: sqlite3.Connection) -> list[tuple[int, bytes]]:
    """Return every root as (version, envelope), oldest first."""
    rows = conn.execute("SELECT version, envelope FROM roots ORDER BY version").fetchall()
    return [(row["version"], row["envelope"]) for row in rows]


# models and releases


def add_release(conn: sqlite3.Connection, release: ReleaseRecord) -> None:
    """Store a release, creating its model on the first one; ConflictError on duplicates."""
    created = to_text(release.created)
    values = (
        *(release.model, release.version, release.label, release.sha256, release.size),
        *(created, to_text(release.expires), release.envelope, dumps(release.build)),
    )
    with transaction(conn):
        conn.execute(
            "INSERT INTO models (name, created) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            (release.model, created),
        )
        try:
            conn.execute(_INSERT_RELEASE, values)
        except sqlite3.IntegrityError as e:
            duplicate = f"model '{release.model}' already has version {release.version}"
            raise constraint_error(e, duplicate) from e


def replace_release_envelope(
    conn: sqlite3.Connection, model: str, version: int, envelope: bytes, expires: datetime
) -> None:
    """Swap in a re-signed envelope and its expiry; raises NotFoundError."""
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE releases SET envelope = ?, expires = ? WHERE model = ? AND version = ?",
            (envelope, to_text(expires), model, version),
        )
        if cursor.rowcount == 0:
            raise missing_release(conn, model, version)


def get_release(conn: sqlite3.Connection, model: str, version: int) -> ReleaseRecord:
    """Return one release; raises NotFoundError."""
    row = conn.execute(
        _SELECT_RELEASES + " WHERE model = ? AND version = ?",
        (model, version),
    ).fetchone()
    if row is None:
        raise missing_release(conn, model, version)
    return _release(row)


def releases(conn: sqlite3.Connection, model: str) -> list[ReleaseRecord]:
    """Return a model's releases, oldest first; raises NotFoundError for an unknown model."""
    rows = conn.execute(
        _SELECT_RELEASES + " WHERE model = ? ORDER BY version",
        (model,),
    ).fetchall()
    if not rows:  # a model row exists only with its first release
        raise UnknownNameError("model", model)
    return [_release(row) for row in rows]


def latest_version(conn: sqlite3.Connection, model: str) -> int:
    """Return the newest version of `model`, 0 when it has none."""
    row = conn.execute("SELECT MAX(version) FROM releases WHERE model = ?", (model,)).fetchone()
    return int(row[0] or 0)


def models(conn: sqlite3.Connection) -> list[ModelSummary]:
    """Return every model with its newest version and release count, by name."""
    rows = conn.execute(
        "SELECT m.name, m.created, MAX(r.version) AS latest, COUNT(*) AS releases"
        " FROM models m JOIN releases r ON r.model = m.name"
        " GROUP BY m.name, m.created ORDER BY m.name"
    ).fetchall()
    return [
        ModelSummary(row["name"], row["latest"], row["releases"], from_text(row["created"]))
        for row in rows
    ]


def _release(row: sqlite3.Row) -> ReleaseRecord:
    return ReleaseRecord(
        model=row["model"],
        version=row["version"],
        label=row["label"],
        sha256=row["sha256"],
        size=row["size"],
        created=from_text(row["created"]),
        expires=from_text(row["expires"]),
        envelope=bytes(row["envelope"]),
        build=loads(row["build"]),
    )


# deployments


def add_deployment(conn: sqlite3.Connection, deployment: DeploymentRecord) -> int:
    """Store a deployment and its targets in one transaction; return its new id."""
    d = deployment
    if len(set(d.device_ids)) != len(d.device_ids):
        raise InvalidInputError(f"deployment lists a device twice: {', '.join(d.device_ids)}")
    values = (
        *(d.model, d.version, d.kind, d.target_kind, d.target),
        *(to_text(d.created), to_text(d.deadline), d.created_by),
        *(d.idempotency_key, d.request_digest),
    )
    with transaction(conn):
        try:
            row = conn.execute(
                "INSERT INTO deployments (model, version, kind, target_kind, target, created,"
                " deadline, created_by, idempotency_key, request_digest)"
                " VALUES (?,?,?,?,?,?,?,?,?,?) RETURNING deployment_id",
                values,
            ).fetchone()
            deployment_id = int(row[0])
            conn.executemany(
                "INSERT INTO deployment_targets (deployment_id, device_id, position)"
                " VALUES (?, ?, ?)",
                [(deployment_id, device, i) for i, device in enumerate(d.device_ids)],
            )
        except sqlite3.IntegrityError as e:
            raise _deployment_error(conn, e, d) from e
    return deployment_id


def _deployment_error(
    conn: sqlite3.Connection, error: sqlite3.IntegrityError, d: DeploymentRecord
) -> RegistryError:
    """Name what the failed deployment referred to that does not exist."""
    if "idempotency_key" in str(error):
        return ConflictError(f"Idempotency-Key {d.idempotency_key!r} was used by another request")
    if not is_foreign_key(error):
        return constraint_error(error, f"deployment lists a device twice: {d.target}")
    release = (d.model, d.version)
    if not exists(conn, "SELECT 1 FROM releases WHERE model = ? AND version = ?", release):
        return missing_release(conn, d.model, d.version)
    for device in d.device_ids:
        if not exists(conn, "SELECT 1 FROM devices WHERE device_id = ?", (device,)):
            return UnknownNameError("device", device)
    return InvalidInputError(f"rejected by the database: {error}")


def get_deployment(conn: sqlite3.Connection, deployment_id: int) -> DeploymentRecord:
    """Return one deployment with its devices; raises NotFoundError."""
    with transaction(conn, write=False):
        row = conn.execute(
            _SELECT_DEPLOYMENTS + " WHERE deployment_id = ?",
            (deployment_id,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no deployment {deployment_id}")
        targets = conn.execute(
            "SELECT device_id FROM deployment_targets WHERE deployment_id = ? ORDER BY position",
            (deployment_id,),
        ).fetchall()
    return _deployment(row, tuple(t["device_id"] for t in targets))


def deployment_by_key(conn: sqlite3.Connection, idempotency_key: str) -> DeploymentRecord | None:
    """Return the deployment stored with this Idempotency-Key, or None."""
    row = conn.execute(
        "SELECT deployment_id FROM deployments WHERE idempotency_key = ?", (idempotency_key,)
    ).fetchone()
    return None if row is None else get_deployment(conn, int(row[0]))


def deployments(conn: sqlite3.Connection, model: str | None) -> list[DeploymentRecord]:
    """Return deployments, newest first, all or of one model."""
    with transaction(conn, write=False):  # one snapshot for both queries
        rows = conn.execute(
            _SELECT_DEPLOYMENTS + " WHERE (? IS NULL OR model = ?) ORDER BY deployment_id DESC",
            (model, model),
        ).fetchall()
        targets = conn.execute(
            "SELECT t.deployment_id, t.device_id FROM deployment_targets t"
            " JOIN deployments d ON d.deployment_id = t.deployment_id"
            " WHERE (? IS NULL OR d.model = ?) ORDER BY t.deployment_id, t.position",
            (model, model),
        ).fetchall()
    devices: dict[int, list[str]] = {}
    for target in targets:
        devices.setdefault(target["deployment_id"], []).append(target["device_id"])
    return [_deployment(row, tuple(devices.get(row["deployment_id"], ()))) for row in rows]


def _deployment(row: sqlite3.Row, device_ids: tuple[str, ...]) -> DeploymentRecord:
    return DeploymentRecord(
        deployment_id=row["deployment_id"],
        model=row["model"],
        version=row["version"],
        target_kind=row["target_kind"],
        target=row["target"],
        device_ids=device_ids,
        created=from_text(row["created"]),
        deadline=from_text(row["deadline"]),
        created_by=row["created_by"],
        kind=row["kind"],
        idempotency_key=row["idempotency_key"],
        request_digest=row["request_digest"],
    )
