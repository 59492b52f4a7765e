"""Both storages, on a SQLite file and on a PostgreSQL schema: every record method, every
refusal, atomicity (set-up and migrations: test_storage_setup, the fleet: test_storage_fleet)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from model_registry.errors import ConflictError, InvalidInputError, NotFoundError
from model_registry.storage import (
    DeploymentRecord,
    PostgresStorage,
    SQLiteStorage,
    Storage,
)
from tests.registry.conftest import StorageBackend
from tests.support.storage_records import SHA, T0, deployment, device, release


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


def test_both_storages_satisfy_the_protocol(db_path: Path) -> None:
    implementations: list[Storage] = [  # mypy checks the shape
        SQLiteStorage(db_path),
        PostgresStorage("postgresql://registry@127.0.0.1/test"),
    ]
    assert [type(i) for i in implementations] == [SQLiteStorage, PostgresStorage]


# roots


async def test_roots_are_listed_oldest_first(storage: Storage) -> None:
    await storage.add_root(2, b"root two")
    await storage.add_root(1, b"root one")
    assert await storage.roots() == [(1, b"root one"), (2, b"root two")]


async def test_duplicate_root_is_a_conflict_and_changes_nothing(storage: Storage) -> None:
    await storage.add_root(1, b"original")
    with pytest.raises(ConflictError, match="root version 1"):
        await storage.add_root(1, b"impostor")
    assert await storage.roots() == [(1, b"original")]


# releases and models


async def test_release_round_trips_exactly(storage: Storage) -> None:
    await storage.add_release(release())
    stored = await storage.get_release("mnist", 1)
    assert stored == release()
    assert stored.created.tzinfo is UTC


async def test_times_in_other_zones_come_back_as_the_same_instant_in_utc(
    storage: Storage,
) -> None:
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    await storage.add_release(release(created=plus_two))
    stored = await storage.get_release("mnist", 1)
    assert stored.created == T0
    assert stored.created.utcoffset() == timedelta(0)


async def test_naive_datetimes_are_refused(storage: Storage) -> None:
    with pytest.raises(InvalidInputError, match="no time zone"):
        await storage.add_release(release(created=datetime(2026, 6, 1)))
    assert await storage.models() == []


async def test_duplicate_release_is_a_conflict_and_changes_nothing(
    storage: Storage,
) -> None:
    await storage.add_release(release())
    with pytest.raises(ConflictError, match="model 'mnist' already has version 1"):
        await storage.add_release(release(envelope=b"other", label="other"))
    assert await storage.releases("mnist") == [release()]


async def test_a_refused_first_release_leaves_no_model_behind(
    storage: Storage, backend: StorageBackend
) -> None:
    # The model row is inserted before the release, so this checks the rollback.
    with pytest.raises(InvalidInputError, match="CHECK"):
        await storage.add_release(release(size=-1))
    with pytest.raises(InvalidInputError, match="JSON"):
        await storage.add_release(release(build={"bad": object()}))
    assert backend.count("models") == backend.count("releases") == 0


async def test_get_release_of_a_missing_version_names_it(storage: Storage) -> None:
    await storage.add_release(release())
    with pytest.raises(NotFoundError, match="model 'mnist' has no version 3"):
        await storage.get_release("mnist", 3)
    with pytest.raises(NotFoundError, match=r"^no model 'other'$"):
        await storage.get_release("other", 1)


async def test_releases_are_oldest_first_and_unknown_models_not_found(
    storage: Storage,
) -> None:
    for version in (2, 3, 1):
        await storage.add_release(release(version=version))
    assert [r.version for r in await storage.releases("mnist")] == [1, 2, 3]
    with pytest.raises(NotFoundError, match="no model 'nope'"):
        await storage.releases("nope")


async def test_latest_version(storage: Storage) -> None:
    assert await storage.latest_version("mnist") == 0
    await storage.add_release(release(version=1))
    await storage.add_release(release(version=2))
    assert await storage.latest_version("mnist") == 2


async def test_models_summarise_by_name(storage: Storage) -> None:
    await storage.add_release(release("zeta", 1))
    await storage.add_release(release("alpha", 1))
    await storage.add_release(release("alpha", 2))
    summaries = await storage.models()
    assert [(m.name, m.latest_version, m.releases) for m in summaries] == [
        ("alpha", 2, 2),
        ("zeta", 1, 1),
    ]
    assert summaries[0].created == release("alpha", 1).created  # the first release's time


async def test_replace_release_envelope(storage: Storage) -> None:
    await storage.add_release(release())
    later = T0 + timedelta(days=60)
    await storage.replace_release_envelope("mnist", 1, b"re-signed", later)
    assert await storage.get_release("mnist", 1) == release(envelope=b"re-signed", expires=later)
    with pytest.raises(NotFoundError, match="model 'mnist' has no version 2"):
        await storage.replace_release_envelope("mnist", 2, b"x", later)


# devices


async def test_device_round_trips_with_defaults_and_full_fields(storage: Storage) -> None:
    full = device(
        "d2",
        assignment_seq=4,
        assignment=b"signed assignment",
        assigned={"mnist": {"version": 1, "sha256": SHA}},
        online=True,
        last_seen=T0,
        state={"models": {"mnist": 1}},
    )
    await storage.add_device(device())
    await storage.add_device(full)
    assert await storage.get_device("d1") == device()
    assert await storage.get_device("d2") == full


async def test_duplicate_device_is_a_conflict_and_changes_nothing(storage: Storage) -> None:
    await storage.add_device(device())
    with pytest.raises(ConflictError, match="device 'd1' already exists"):
        await storage.add_device(device(group="other"))
    assert await storage.devices() == [device()]


async def test_get_unknown_device(storage: Storage) -> None:
    with pytest.raises(NotFoundError, match="no device 'd1'"):
        await storage.get_device("d1")


async def test_devices_by_id_and_by_group(storage: Storage) -> None:
    for device_id, group in (("d3", "lab"), ("d1", "field"), ("d2", "lab")):
        await storage.add_device(device(device_id, group))
    assert [d.device_id for d in await storage.devices()] == ["d1", "d2", "d3"]
    assert [d.device_id for d in await storage.devices("lab")] == ["d2", "d3"]
    assert await storage.devices("none") == []


async def test_set_assignment_stores_a_growing_seq(storage: Storage) -> None:
    await storage.add_device(device())
    assigned = {"mnist": {"version": 2}}
    await storage.set_assignment("d1", 1, b"seq 1", {})
    await storage.set_assignment("d1", 5, b"seq 5", assigned)
    stored = await storage.get_device("d1")
    assert (stored.assignment_seq, stored.assignment, stored.assigned) == (5, b"seq 5", assigned)


@pytest.mark.parametrize(
    ("device_id", "seq", "error", "message"),
    [
        ("d1", 3, ConflictError, "seq 3 for device 'd1' does not grow: it is at 3"),
        ("d1", 2, ConflictError, "does not grow"),
        ("d1", 0, ConflictError, "does not grow"),
        ("ghost", 9, NotFoundError, "no device 'ghost'"),
    ],
)
async def test_set_assignment_refusals_change_nothing(
    storage: Storage, device_id: str, seq: int, error: type[Exception], message: str
) -> None:
    await storage.add_device(device())
    await storage.set_assignment("d1", 3, b"seq 3", {"m": {"version": 1}})
    with pytest.raises(error, match=message):
        await storage.set_assignment(device_id, seq, b"replayed", {})
    stored = await storage.get_device("d1")
    assert (stored.assignment_seq, stored.assignment) == (3, b"seq 3")


async def test_record_state(storage: Storage) -> None:
    await storage.add_device(device())
    await storage.record_state("d1", {"models": {"mnist": 2}}, True, T0)
    stored = await storage.get_device("d1")
    assert (stored.state, stored.online, stored.last_seen) == ({"models": {"mnist": 2}}, True, T0)
    await storage.record_state("d1", {}, False, T0 + timedelta(seconds=1))
    assert (await storage.get_device("d1")).online is False
    with pytest.raises(NotFoundError, match="no device 'd9'"):
        await storage.record_state("d9", {}, True, T0)


# deployments


async def test_deployment_round_trips_keeping_device_order(storage: Storage) -> None:
    await storage.add_release(release())
    for device_id in ("d1", "d2", "d3"):
        await storage.add_device(device(device_id))
    record = deployment(("d3", "d1", "d2"), kind="rollback")
    deployment_id = await storage.add_deployment(record)
    assert await storage.get_deployment(deployment_id) == replace(
        record, deployment_id=deployment_id
    )


async def test_deployments_newest_first_and_by_model(storage: Storage) -> None:
    await storage.add_release(release("a"))
    await storage.add_release(release("b"))
    await storage.add_device(device())
    first = await storage.add_deployment(deployment(model="a"))
    second = await storage.add_deployment(deployment(model="b", target_kind="group", target="lab"))
    third = await storage.add_deployment(deployment(("d1",), model="a"))
    assert first < second < third
    assert [d.deployment_id for d in await storage.deployments()] == [third, second, first]
    assert [d.deployment_id for d in await storage.deployments("a")] == [third, first]
    assert all(d.device_ids == ("d1",) for d in await storage.deployments())
    assert await storage.deployments("unknown") == []


async def test_empty_deployment_is_allowed(storage: Storage) -> None:
    await storage.add_release(release())
    deployment_id = await storage.add_deployment(deployment((), target_kind="group", target="x"))
    assert (await storage.get_deployment(deployment_id)).device_ids == ()


async def test_get_unknown_deployment(storage: Storage) -> None:
    with pytest.raises(NotFoundError, match="no deployment 7"):
        await storage.get_deployment(7)


@pytest.mark.parametrize(
    ("record", "error", "message"),
    [
        (deployment(("d1", "ghost")), NotFoundError, "no device 'ghost'"),
        (deployment(("d1", "d1")), InvalidInputError, "lists a device twice"),
        (deployment(version=9), NotFoundError, "model 'mnist' has no version 9"),
        (deployment(kind="upgrade"), InvalidInputError, "CHECK"),
        (deployment(target_kind="fleet"), InvalidInputError, "CHECK"),
    ],
)
async def test_a_refused_deployment_stores_nothing(
    storage: Storage,
    backend: StorageBackend,
    record: DeploymentRecord,
    error: type[Exception],
    message: str,
) -> None:
    await storage.add_release(release())
    await storage.add_device(device())
    with pytest.raises(error, match=message):
        await storage.add_deployment(record)
    assert await storage.deployments() == []
    assert backend.count("deployments") == backend.count("deployment_targets") == 0


async def test_a_failing_target_rolls_back_the_inserted_deployment_row(
    storage: Storage, backend: StorageBackend
) -> None:
    # "ghost" passes the Python checks and fails the foreign key only after the deployment row
    # is inserted, so this exercises the transaction, not an early return.
    await storage.add_release(release())
    await storage.add_device(device())
    await storage.add_deployment(deployment())
    with pytest.raises(NotFoundError, match="no device 'ghost'"):
        await storage.add_deployment(deployment(("d1", "ghost")))
    assert backend.count("deployments") == backend.count("deployment_targets") == 1
    assert await storage.add_deployment(deployment()) > 1


# device messages


async def test_events_newest_first_with_limit_and_since(storage: Storage) -> None:
    await storage.add_device(device())
    for minute in (0, 2, 1):
        await storage.add_event("d1", T0 + timedelta(minutes=minute), {"n": minute})
    events = await storage.events("d1")
    assert [e.body["n"] for e in events] == [2, 1, 0]
    assert events[0].received == T0 + timedelta(minutes=2)
    assert events[0].device_id == "d1"
    assert [e.body["n"] for e in await storage.events("d1", limit=1)] == [2]
    since = await storage.events("d1", since=T0 + timedelta(minutes=1))
    assert [e.body["n"] for e in since] == [2, 1]  # since is inclusive


async def test_telemetry_newest_first_and_pruned(storage: Storage) -> None:
    await storage.add_device(device())
    for minute in range(5):
        await storage.add_telemetry("d1", T0 + timedelta(minutes=minute), {"n": minute})
    assert [t.body["n"] for t in await storage.telemetry("d1", limit=3)] == [4, 3, 2]
    assert await storage.prune_telemetry(T0 + timedelta(minutes=3)) == 3
    assert [t.body["n"] for t in await storage.telemetry("d1")] == [4, 3]
    assert await storage.prune_telemetry(T0) == 0


async def test_messages_keep_events_and_telemetry_apart(storage: Storage) -> None:
    await storage.add_device(device())
    await storage.add_event("d1", T0, {"event": "installed"})
    assert await storage.telemetry("d1") == []
    assert [e.body for e in await storage.events("d1")] == [{"event": "installed"}]


async def test_messages_of_unknown_devices(storage: Storage) -> None:
    with pytest.raises(NotFoundError, match="no device 'ghost'"):
        await storage.add_event("ghost", T0, {})
    with pytest.raises(NotFoundError, match="no device 'ghost'"):
        await storage.add_telemetry("ghost", T0, {})
    with pytest.raises(NotFoundError, match="no device 'ghost'"):
        await storage.events("ghost")
    with pytest.raises(NotFoundError, match="no device 'ghost'"):
        await storage.telemetry("ghost")


async def test_a_limit_below_one_is_refused(storage: Storage) -> None:
    await storage.add_device(device())
    with pytest.raises(InvalidInputError, match="limit"):
        await storage.events("d1", limit=0)
