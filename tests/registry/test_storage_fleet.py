"""Both storages on the fleet's records: device reports, retention, removal, tokens, and the
races a database server lets happen (the same `storage` and `backend` fixtures as test_storage)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from model_registry.errors import ConflictError, InvalidInputError, NotFoundError
from model_registry.storage import DUPLICATE, STORED, UNKNOWN_DEVICE, DeviceReport, Storage
from tests.registry.conftest import StorageBackend
from tests.support.storage_records import T0, deployment, device, release


def report(kind: str, seq: int | None = None, **changes: object) -> DeviceReport:
    fields: dict[str, object] = {
        "device_id": "d1",
        "kind": kind,
        "received": T0 + timedelta(seconds=seq or 0),
        "body": {"n": seq},
        "msg_epoch": None if seq is None else "boot-1",
        "msg_seq": seq,
    }
    fields.update(changes)
    return DeviceReport(**fields)  # type: ignore[arg-type]


async def test_reports_are_applied_in_order_once_each(storage: Storage) -> None:
    await storage.add_device(device())
    outcomes = await storage.add_device_reports(
        [
            report("state", body={"models": {"m": 1}}),
            report("events", 1, error={"code": "bad"}),
            report("events", 1),  # a resend
            report("telemetry", 2),
            report("telemetry", 2),
            report("events", 3, device_id="ghost"),
            report("state", online=False, received=T0 + timedelta(minutes=5), body={}),
        ]
    )
    assert outcomes == [STORED, STORED, DUPLICATE, STORED, DUPLICATE, UNKNOWN_DEVICE, STORED]
    stored = await storage.get_device("d1")
    assert stored.state == {"models": {"m": 1}}  # the will keeps the last online state
    assert stored.online is False
    assert stored.last_seen == T0 + timedelta(seconds=2)  # ... and when it was last heard
    assert stored.last_error == {"code": "bad"}
    assert [e.body for e in await storage.events("d1")] == [{"n": 1}]
    assert [t.body for t in await storage.telemetry("d1")] == [{"n": 2}]


async def test_prune_by_age_and_by_count_per_device(storage: Storage) -> None:
    for device_id in ("d1", "d2"):
        await storage.add_device(device(device_id))
        for minute in range(6):
            await storage.add_event(device_id, T0 + timedelta(minutes=minute), {"m": minute})
    deleted = await storage.prune_messages("events", T0 + timedelta(minutes=2), keep_per_device=3)
    assert deleted == 6  # minutes 0, 1 by age and 2 by count, on each device
    for device_id in ("d1", "d2"):
        assert [e.body["m"] for e in await storage.events(device_id)] == [5, 4, 3]
    assert await storage.prune_messages("telemetry", T0, keep_per_device=1) == 0
    with pytest.raises(InvalidInputError, match="kind must be"):
        await storage.prune_messages("logs", T0, keep_per_device=1)
    with pytest.raises(InvalidInputError, match="keep must be at least 1"):
        await storage.prune_messages("events", T0, keep_per_device=0)


async def test_removing_a_device_removes_what_refers_to_it(
    storage: Storage, backend: StorageBackend
) -> None:
    await storage.add_release(release())
    for device_id in ("d1", "d2"):
        await storage.add_device(device(device_id))
        await storage.add_event(device_id, T0, {})
        await storage.add_telemetry(device_id, T0, {})
    deployment_id = await storage.add_deployment(deployment(("d1", "d2")))
    await storage.remove_device("d1")
    assert [d.device_id for d in await storage.devices()] == ["d2"]
    assert (await storage.get_deployment(deployment_id)).device_ids == ("d2",)
    assert backend.count("device_events") == backend.count("telemetry") == 1
    with pytest.raises(NotFoundError, match="no device 'd1'"):
        await storage.remove_device("d1")


async def test_moving_a_device_to_another_group(storage: Storage) -> None:
    await storage.add_device(device())
    moved = await storage.set_device_group("d1", "field")
    assert moved.group == "field"
    assert [d.device_id for d in await storage.devices("field")] == ["d1"]
    with pytest.raises(NotFoundError, match="no device 'ghost'"):
        await storage.set_device_group("ghost", "field")


async def test_deployments_by_idempotency_key_and_their_events(storage: Storage) -> None:
    await storage.add_release(release())
    await storage.add_device(device())
    await storage.add_event("d1", T0 - timedelta(seconds=1), {"event": "before"})
    keyed = deployment(idempotency_key="key-1", request_digest="digest")
    deployment_id = await storage.add_deployment(keyed)
    await storage.add_event("d1", T0, {"event": "installed"})
    found = await storage.deployment_by_key("key-1")
    assert found is not None
    assert (found.deployment_id, found.request_digest) == (deployment_id, "digest")
    assert await storage.deployment_by_key("key-2") is None
    with pytest.raises(ConflictError, match="Idempotency-Key 'key-1' was used"):
        await storage.add_deployment(keyed)
    events = await storage.deployment_events(deployment_id)
    assert [e.body for e in events] == [{"event": "installed"}]  # since the deployment only
    with pytest.raises(NotFoundError, match="no deployment 99"):
        await storage.deployment_events(99)


async def test_token_use_and_removal(storage: Storage) -> None:
    admin = await storage.add_token("admin", "admin", "hash-a", T0)
    viewer = await storage.add_token("ci", "viewer", "hash-v", T0)
    await storage.touch_token(viewer, T0 + timedelta(minutes=1))
    await storage.touch_token(999, T0)  # nothing to touch: nothing happens
    assert [t.last_used for t in await storage.tokens()] == [None, T0 + timedelta(minutes=1)]
    assert (await storage.remove_token(viewer)).name == "ci"
    with pytest.raises(ConflictError, match="last admin token"):
        await storage.remove_token(admin)
    with pytest.raises(NotFoundError, match="no token 999"):
        await storage.remove_token(999)
    assert [t.token_id for t in await storage.tokens()] == [admin]


# races: with SQLite the calls run one after another; PostgreSQL runs them at once


async def test_two_removals_of_the_last_two_admins_leave_one(storage: Storage) -> None:
    first = await storage.add_token("a", "admin", "hash-1", T0)
    second = await storage.add_token("b", "admin", "hash-2", T0)
    results = await asyncio.gather(
        storage.remove_token(first), storage.remove_token(second), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["ConflictError", "TokenRecord"]
    assert [t.role for t in await storage.tokens()] == ["admin"]


async def test_concurrent_assignments_with_one_seq_store_one(storage: Storage) -> None:
    await storage.add_device(device())
    results = await asyncio.gather(
        *(storage.set_assignment("d1", 1, b"seq 1 #%d" % i, {}) for i in range(10)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, ConflictError) for r in results if r is not None)
    assert (await storage.get_device("d1")).assignment_seq == 1


async def test_reports_racing_a_removal_are_stored_or_unknown(
    storage: Storage, backend: StorageBackend
) -> None:
    await storage.add_device(device())
    batches = [[report("events", 10 * b + i) for i in range(10)] for b in range(10)]
    results = await asyncio.gather(
        *(storage.add_device_reports(batch) for batch in batches[:5]),
        storage.remove_device("d1"),
        *(storage.add_device_reports(batch) for batch in batches[5:]),
    )
    outcomes = {o for r in results if isinstance(r, list) for o in r}
    assert outcomes <= {STORED, UNKNOWN_DEVICE}  # never a failed batch
    assert backend.count("device_events") == 0  # whatever was stored went with the device
    assert await storage.devices() == []


async def test_batches_updating_devices_in_opposite_orders_all_store(storage: Storage) -> None:
    ids = [f"d{i}" for i in range(8)]
    for device_id in ids:
        await storage.add_device(device(device_id))

    def batch(number: int) -> list[DeviceReport]:
        order = ids if number % 2 else ids[::-1]
        return [report("events", 100 * number + i, device_id=d) for i, d in enumerate(order)]

    results = await asyncio.gather(*(storage.add_device_reports(batch(n)) for n in range(12)))
    assert {outcome for outcomes in results for outcome in outcomes} == {STORED}
