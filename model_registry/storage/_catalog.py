"""Roots, models, releases and deployments, as steps both backends run (see `_db`).

Each function yields its statements; the caller picks the transaction (`SQLStorage`), so an
error leaves nothing stored.
"""

from __future__ import annotations

from datetime import datetime

from model_registry.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
    UnknownNameError,
)
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
    to_text,
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


def missing_release(model: str, version: int) -> Steps[NotFoundError]:
    """The error for a missing release: no such model at all, or no such version of it."""
    latest = yield from latest_version(model)
    if latest == 0:
        return UnknownNameError("model", model)
    return NotFoundError(f"model '{model}' has no version {version} (its latest is {latest})")


# roots


def add_root(version: int, envelope: bytes) -> Steps[None]:
    """Store root `version`; raises ConflictError if it is stored already."""
    try:
        yield Query("INSERT INTO roots (version, envelope) VALUES (?, ?)", (version, envelope))
    except ConstraintViolationError as e:
        raise constraint_error(e, f"root version {version} is already stored") from e


def roots() -> Steps[list[tuple[int, bytes]]]:
    """Return every root as (version, envelope), oldest first."""
    result = yield Query("SELECT version, envelope FROM roots ORDER BY version")
    return [(row["version"], bytes(row["envelope"])) for row in result.rows]


# models and releases


def add_release(release: ReleaseRecord) -> Steps[None]:
    """Store a release, creating its model on the first one; ConflictError on duplicates."""
    created = to_text(release.created)
    values = (
        *(release.model, release.version, release.label, release.sha256, release.size),
        *(created, to_text(release.expires), release.envelope, dumps(release.build)),
    )
    yield Query(
        "INSERT INTO models (name, created) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        (release.model, created),
    )
    try:
        yield Query(_INSERT_RELEASE, values)
    except ConstraintViolationError as e:
        duplicate = f"model '{release.model}' already has version {release.version}"
        raise constraint_error(e, duplicate) from e


def replace_release_envelope(
    model: str, version: int, envelope: bytes, expires: datetime
) -> Steps[None]:
    """Swap in a re-signed envelope and its expiry; raises NotFoundError."""
    result = yield Query(
        "UPDATE releases SET envelope = ?, expires = ? WHERE model = ? AND version = ?",
        (envelope, to_text(expires), model, version),
    )
    if result.rowcount == 0:
        raise (yield from missing_release(model, version))


def get_release(model: str, version: int) -> Steps[ReleaseRecord]:
    """Return one release; raises NotFoundError."""
    result = yield Query(_SELECT_RELEASES + " WHERE model = ? AND version = ?", (model, version))
    row = result.one()
    if row is None:
        raise (yield from missing_release(model, version))
    return _release(row)


def releases(model: str) -> Steps[list[ReleaseRecord]]:
    """Return a model's releases, oldest first; raises NotFoundError for an unknown model."""
    result = yield Query(_SELECT_RELEASES + " WHERE model = ? ORDER BY version", (model,))
    if not result.rows:  # a model row exists only with its first release
        raise UnknownNameError("model", model)
    return [_release(row) for row in result.rows]


def latest_version(model: str) -> Steps[int]:
    """Return the newest version of `model`, 0 when it has none."""
    result = yield Query("SELECT MAX(version) FROM releases WHERE model = ?", (model,))
    row = result.one()
    return int(row[0] or 0) if row is not None else 0


def models() -> Steps[list[ModelSummary]]:
    """Return every model with its newest version and release count, by name."""
    result = yield Query(
        "SELECT m.name, m.created, MAX(r.version) AS latest, COUNT(*) AS releases"
        " FROM models m JOIN releases r ON r.model = m.name"
        " GROUP BY m.name, m.created ORDER BY m.name"
    )
    return [
        ModelSummary(row["name"], row["latest"], row["releases"], from_text(row["created"]))
        for row in result.rows
    ]


def _release(row: Row) -> ReleaseRecord:
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


def add_deployment(deployment: DeploymentRecord) -> Steps[int]:
    """Store a deployment and its targets; return its new id.

    A ConstraintViolationError passes through: `deployment_error` names its cause afterwards, in a
    new transaction, since PostgreSQL runs nothing more in a failed one.
    """
    d = deployment
    if len(set(d.device_ids)) != len(d.device_ids):
        raise InvalidInputError(f"deployment lists a device twice: {', '.join(d.device_ids)}")
    values = (
        *(d.model, d.version, d.kind, d.target_kind, d.target),
        *(to_text(d.created), to_text(d.deadline), d.created_by),
        *(d.idempotency_key, d.request_digest),
    )
    result = yield Query(
        "INSERT INTO deployments (model, version, kind, target_kind, target, created,"
        " deadline, created_by, idempotency_key, request_digest)"
        " VALUES (?,?,?,?,?,?,?,?,?,?) RETURNING deployment_id",
        values,
    )
    deployment_id = int(result.rows[0][0])  # RETURNING gives the inserted row
    if d.device_ids:
        yield Query(
            "INSERT INTO deployment_targets (deployment_id, device_id, position) VALUES (?, ?, ?)",
            [(deployment_id, device, i) for i, device in enumerate(d.device_ids)],
            many=True,
        )
    return deployment_id


def deployment_error(error: ConstraintViolationError, d: DeploymentRecord) -> Steps[RegistryError]:
    """Name what the refused deployment referred to that does not exist."""
    if "idempotency_key" in error.detail:
        return ConflictError(f"Idempotency-Key {d.idempotency_key!r} was used by another request")
    if error.kind != "foreign_key":
        return constraint_error(error, f"deployment lists a device twice: {d.target}")
    release = (d.model, d.version)
    if not (yield from exists("SELECT 1 FROM releases WHERE model = ? AND version = ?", release)):
        return (yield from missing_release(d.model, d.version))
    for device in d.device_ids:
        if not (yield from exists("SELECT 1 FROM devices WHERE device_id = ?", (device,))):
            return UnknownNameError("device", device)
    return error


def get_deployment(deployment_id: int) -> Steps[DeploymentRecord]:
    """Return one deployment with its devices; raises NotFoundError."""
    result = yield Query(_SELECT_DEPLOYMENTS + " WHERE deployment_id = ?", (deployment_id,))
    row = result.one()
    if row is None:
        raise NotFoundError(f"no deployment {deployment_id}")
    targets = yield Query(
        "SELECT device_id FROM deployment_targets WHERE deployment_id = ? ORDER BY position",
        (deployment_id,),
    )
    return _deployment(row, tuple(t["device_id"] for t in targets.rows))


def deployment_by_key(idempotency_key: str) -> Steps[DeploymentRecord | None]:
    """Return the deployment stored with this Idempotency-Key, or None."""
    result = yield Query(
        "SELECT deployment_id FROM deployments WHERE idempotency_key = ?", (idempotency_key,)
    )
    row = result.one()
    return None if row is None else (yield from get_deployment(int(row[0])))


def deployments(model: str | None) -> Steps[list[DeploymentRecord]]:
    """Return deployments, newest first, all or of one model."""
    # CAST: PostgreSQL cannot tell the type of a bare NULL parameter.
    result = yield Query(
        _SELECT_DEPLOYMENTS
        + " WHERE (CAST(? AS TEXT) IS NULL OR model = ?) ORDER BY deployment_id DESC",
        (model, model),
    )
    targets = yield Query(
        "SELECT t.deployment_id, t.device_id FROM deployment_targets t"
        " JOIN deployments d ON d.deployment_id = t.deployment_id"
        " WHERE (CAST(? AS TEXT) IS NULL OR d.model = ?) ORDER BY t.deployment_id, t.position",
        (model, model),
    )
    devices: dict[int, list[str]] = {}
    for target in targets.rows:
        devices.setdefault(target["deployment_id"], []).append(target["device_id"])
    return [_deployment(row, tuple(devices.get(row["deployment_id"], ()))) for row in result.rows]


def _deployment(row: Row, device_ids: tuple[str, ...]) -> DeploymentRecord:
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
