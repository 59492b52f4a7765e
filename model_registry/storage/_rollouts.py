"""Rollouts and their audit records, as steps both backends run (see `_db`).

A rollout is one row: its waves, the versions its devices ran before and why it stopped are
JSON columns, so that every change of the controller is one conditional UPDATE (on `step`),
stored in the same transaction as the deployments that change makes. That is what lets a
registry killed at any moment resume without starting a wave twice or skipping one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from model_registry.errors import ConflictError, NotFoundError
from model_registry.storage import _catalog, _fleet
from model_registry.storage._db import (
    ConstraintViolationError,
    Query,
    Row,
    Steps,
    dumps,
    from_text,
    loads,
    optional_from_text,
    to_text,
)
from model_registry.storage.rollout_records import (
    ROLLOUT_ACTIVE,
    RolloutDecision,
    RolloutDeployment,
    RolloutRecord,
    RolloutWave,
)

_COLUMNS = (
    "rollout_id, model, version, device_group, policy, state, created, created_by, updated,"
    " step, waves, previous, halt"
)
# Built from the constant column list above, never from input.
_SELECT = f"SELECT {_COLUMNS} FROM rollouts"  # noqa: S608
_ACTIVE = ",".join(f"'{state}'" for state in ROLLOUT_ACTIVE)  # constants, never input


def add_rollout(rollout: RolloutRecord, decision: RolloutDecision) -> Steps[int]:
    """Store a new rollout at step 0 with its first decision; return its id."""
    r = rollout
    busy = yield Query(
        f"SELECT rollout_id FROM rollouts WHERE model = ? AND device_group = ?"  # noqa: S608
        f" AND state IN ({_ACTIVE})",
        (r.model, r.group),
    )
    if (row := busy.one()) is not None:
        raise _busy(r, int(row[0]))
    yield from _catalog.get_release(r.model, r.version)  # NotFoundError naming what is missing
    try:
        result = yield Query(
            "INSERT INTO rollouts (model, version, device_group, policy, state, created,"
            " created_by, updated, step, waves, previous, halt)"
            " VALUES (?,?,?,?,?,?,?,?,0,?,?,?) RETURNING rollout_id",
            (
                *(r.model, r.version, r.group, dumps(r.policy), r.state, to_text(r.created)),
                *(r.created_by, to_text(r.updated), _waves_json(r.waves), dumps(r.previous)),
                None if r.halt is None else dumps(r.halt),
            ),
        )
    except ConstraintViolationError as e:  # the unique index: another replica got there first
        raise ConflictError(
            f"a rollout of {r.model!r} to group {r.group!r} is already under way"
        ) from e
    rollout_id = int(result.rows[0][0])
    yield from _add_decisions(rollout_id, [decision])
    return rollout_id


def _busy(r: RolloutRecord, other: int) -> ConflictError:
    return ConflictError(
        f"rollout {other} of {r.model!r} to group {r.group!r} is still under way: "
        f"pause, resume or abort it (model-registry rollout abort {other}) before starting another"
    )


def get_rollout(rollout_id: int) -> Steps[RolloutRecord]:
    """Return one rollout; raises NotFoundError."""
    result = yield Query(_SELECT + " WHERE rollout_id = ?", (rollout_id,))
    row = result.one()
    if row is None:
        raise NotFoundError(f"no rollout {rollout_id}")
    return _rollout(row)


def rollouts(model: str | None, active: bool) -> Steps[list[RolloutRecord]]:
    """Return rollouts, newest first, all or of one model, all or only the active ones."""
    states = f" AND state IN ({_ACTIVE})" if active else ""
    # CAST: PostgreSQL cannot tell the type of a bare NULL parameter.
    result = yield Query(
        _SELECT + " WHERE (CAST(? AS TEXT) IS NULL OR model = ?)" + states
        + " ORDER BY rollout_id DESC",
        (model, model),
    )  # fmt: skip
    return [_rollout(row) for row in result.rows]


def update_rollout(
    rollout: RolloutRecord,
    deployments: Sequence[RolloutDeployment],
    decisions: Sequence[RolloutDecision],
) -> Steps[RolloutRecord]:
    """Store the rollout's change, its deployments and decisions, if it is still at its step."""
    waves = list(rollout.waves)
    for made in deployments:
        deployment_id = yield from _catalog.add_deployment(made.deployment)
        yield from _fleet.set_assignments(made.assignments)
        wave = waves[made.wave]
        if made.deployment.kind == "rollback":
            waves[made.wave] = replace(wave, rollbacks=(*wave.rollbacks, deployment_id))
        else:
            waves[made.wave] = replace(wave, deployment_id=deployment_id)
    stored = replace(rollout, waves=tuple(waves), step=rollout.step + 1)
    s = stored
    result = yield Query(
        "UPDATE rollouts SET state = ?, updated = ?, step = ?, waves = ?, previous = ?, halt = ?"
        " WHERE rollout_id = ? AND step = ?",
        (
            *(s.state, to_text(s.updated), s.step, _waves_json(s.waves), dumps(s.previous)),
            *(None if s.halt is None else dumps(s.halt), s.rollout_id, rollout.step),
        ),
    )
    if result.rowcount != 1:
        # Raised before anything else runs: the caller's transaction undoes the deployments.
        found = yield Query("SELECT step FROM rollouts WHERE rollout_id = ?", (s.rollout_id,))
        if found.one() is None:
            raise NotFoundError(f"no rollout {s.rollout_id}")
        raise ConflictError(
            f"rollout {s.rollout_id} changed meanwhile (step {found.rows[0][0]}, not "
            f"{rollout.step}): look at it again"
        )
    yield from _add_decisions(s.rollout_id, decisions)
    return stored


def rollout_decisions(rollout_id: int) -> Steps[list[RolloutDecision]]:
    """Return a rollout's decisions, oldest first; raises NotFoundError."""
    yield from get_rollout(rollout_id)
    result = yield Query(
        "SELECT rollout_id, at, actor, action, reason, numbers FROM rollout_decisions"
        " WHERE rollout_id = ? ORDER BY decision_id",
        (rollout_id,),
    )
    return [
        RolloutDecision(
            at=from_text(row["at"]),
            actor=row["actor"],
            action=row["action"],
            reason=row["reason"],
            numbers=loads(row["numbers"]),
            rollout_id=int(row["rollout_id"]),
        )
        for row in result.rows
    ]


def _add_decisions(rollout_id: int, decisions: Sequence[RolloutDecision]) -> Steps[None]:
    if not decisions:
        return
    yield Query(
        "INSERT INTO rollout_decisions (rollout_id, at, actor, action, reason, numbers)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (rollout_id, to_text(d.at), d.actor, d.action, d.reason, dumps(d.numbers))
            for d in decisions
        ],
        many=True,
    )


def _waves_json(waves: Sequence[RolloutWave]) -> str:
    return dumps({"waves": [_wave_dict(w) for w in waves]})


def _wave_dict(w: RolloutWave) -> dict[str, Any]:
    return {
        "index": w.index,
        "percent": w.percent,
        "devices": list(w.devices),
        "started": to_text(w.started),
        "deployment_id": w.deployment_id,
        "settled": None if w.settled is None else to_text(w.settled),
        "passed": None if w.passed is None else to_text(w.passed),
        "rollbacks": list(w.rollbacks),
    }


def _wave(d: dict[str, Any]) -> RolloutWave:
    return RolloutWave(
        index=int(d["index"]),
        percent=float(d["percent"]),
        devices=tuple(d["devices"]),
        started=from_text(d["started"]),
        deployment_id=d["deployment_id"],
        settled=optional_from_text(d["settled"]),
        passed=optional_from_text(d["passed"]),
        rollbacks=tuple(d["rollbacks"]),
    )


def _rollout(row: Row) -> RolloutRecord:
    halt = row["halt"]
    return RolloutRecord(
        rollout_id=int(row["rollout_id"]),
        model=row["model"],
        version=int(row["version"]),
        group=row["device_group"],
        policy=loads(row["policy"]),
        state=row["state"],
        created=from_text(row["created"]),
        created_by=row["created_by"],
        updated=from_text(row["updated"]),
        step=int(row["step"]),
        waves=tuple(_wave(w) for w in loads(row["waves"])["waves"]),
        previous=loads(row["previous"]),
        halt=None if halt is None else loads(halt),
    )
