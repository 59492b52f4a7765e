"""Both storages on a deployment stored with its devices' assignments in one transaction (the
same `storage` fixture as test_storage): all of them are stored, or none and no deployment."""

from __future__ import annotations

import pytest

from model_registry.errors import ConflictError, InvalidInputError, NotFoundError
from model_registry.storage import AssignmentUpdate, Storage
from tests.support.storage_records import deployment, device, release

# Above the 500 ids the storage puts in one `IN (...)`, so lookups span several.
FLEET = 600
IDS = tuple(f"d{i:04d}" for i in range(FLEET))


def update(device_id: str, seq: int) -> AssignmentUpdate:
    return AssignmentUpdate(
        device_id, seq, b"assignment %d for " % seq + device_id.encode(), {"mnist": {"version": 1}}
    )


@pytest.fixture
async def fleet(storage: Storage) -> Storage:
    await storage.add_release(release())
    for device_id in IDS:
        await storage.add_device(device(device_id, "fleet"))
    await storage.set_assignment(IDS[7], 4, b"earlier", {})
    return storage


async def test_a_deployment_stores_every_assignment_with_it(fleet: Storage) -> None:
    seqs = {d: 5 if d == IDS[7] else 1 for d in IDS}
    # Given in reverse order: the storage applies them in its own order.
    updates = [update(d, seqs[d]) for d in reversed(IDS)]
    deployment_id = await fleet.add_deployment(deployment(IDS), updates)
    assert (await fleet.get_deployment(deployment_id)).device_ids == IDS
    stored = {d.device_id: d for d in await fleet.devices("fleet")}
    assert len(stored) == FLEET
    for device_id in IDS:
        got = stored[device_id]
        assert got.assignment_seq == seqs[device_id]
        assert got.assignment == update(device_id, seqs[device_id]).envelope
        assert got.assigned == {"mnist": {"version": 1}}


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (update(IDS[7], 4), ConflictError, f"seq 4 for device '{IDS[7]}' does not grow: it is at"),
        (update(IDS[7], 2), ConflictError, "does not grow: it is at 4"),
        (update("ghost", 1), NotFoundError, "no device 'ghost'"),
        (update(IDS[3], 2), InvalidInputError, "name a device twice"),
    ],
)
async def test_one_refused_assignment_stores_nothing_at_all(
    fleet: Storage, bad: AssignmentUpdate, error: type[Exception], message: str
) -> None:
    # The refused one comes last, after hundreds that would apply.
    updates = [update(d, 1) for d in IDS if d != IDS[7]] + [bad]
    with pytest.raises(error, match=message):
        await fleet.add_deployment(deployment(IDS), updates)
    assert await fleet.deployments() == []
    for got in await fleet.devices("fleet"):
        expected = (4, b"earlier") if got.device_id == IDS[7] else (0, None)
        assert (got.assignment_seq, got.assignment) == expected


async def test_a_deployment_without_assignments_stores_only_itself(fleet: Storage) -> None:
    deployment_id = await fleet.add_deployment(deployment(IDS[:2]))
    assert (await fleet.get_deployment(deployment_id)).device_ids == IDS[:2]
    assert (await fleet.get_device(IDS[0])).assignment_seq == 0
