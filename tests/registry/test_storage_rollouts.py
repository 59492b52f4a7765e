"""Both storages on rollouts (the same `storage` fixture as test_storage): a change is stored
with its deployments and decisions only if the rollout is still at the step it was read at."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from model_registry.errors import ConflictError, NotFoundError
from model_registry.storage import (
    AssignmentUpdate,
    RolloutDecision,
    RolloutDeployment,
    RolloutRecord,
    RolloutWave,
    Storage,
)
from tests.support.storage_records import T0, deployment, device, release

IDS = ("d1", "d2", "d3")


def rollout(**changes: object) -> RolloutRecord:
    record = RolloutRecord(
        rollout_id=0, model="mnist", version=2, group="lab", policy={"steps": [50, 100]},
        state="running", created=T0, created_by="admin", updated=T0,
    )  # fmt: skip
    return replace(record, **changes)


def decision(action: str, **numbers: object) -> RolloutDecision:
    return RolloutDecision(T0, "controller", action, f"because {action}", dict(numbers))


def moving(device_ids: tuple[str, ...], seq: int = 1, kind: str = "deploy") -> RolloutDeployment:
    made = deployment(device_ids, version=2 if kind == "deploy" else 1, kind=kind)
    updates = [
        AssignmentUpdate(d, seq, b"a%d" % seq, {"mnist": {"version": 2}}) for d in device_ids
    ]
    return RolloutDeployment(made, updates, 0)


@pytest.fixture
async def fleet(storage: Storage) -> Storage:
    await storage.add_release(release(version=1))
    await storage.add_release(release(version=2))
    for device_id in IDS:
        await storage.add_device(device(device_id, "lab"))
    return storage


async def test_a_rollout_round_trips_with_its_first_decision(fleet: Storage) -> None:
    rollout_id = await fleet.add_rollout(rollout(), decision("started", devices=3))
    stored = await fleet.get_rollout(rollout_id)
    assert stored == rollout(rollout_id=rollout_id)
    assert stored.active
    assert stored.step == 0
    (first,) = await fleet.rollout_decisions(rollout_id)
    assert (first.action, first.numbers, first.rollout_id) == (
        "started",
        {"devices": 3},
        rollout_id,
    )
    assert [r.rollout_id for r in await fleet.rollouts("mnist")] == [rollout_id]
    assert await fleet.rollouts("other") == []


async def test_a_wave_is_stored_with_its_deployment_and_assignments(fleet: Storage) -> None:
    rollout_id = await fleet.add_rollout(rollout(), decision("started"))
    read = await fleet.get_rollout(rollout_id)
    wave = RolloutWave(0, 50.0, ("d1", "d2"), T0 + timedelta(seconds=1))
    changed = replace(read, waves=(wave,), previous={"d1": 1, "d2": None})
    stored = await fleet.update_rollout(changed, [moving(("d1", "d2"))], [decision("wave_started")])
    assert stored.step == 1
    again = await fleet.get_rollout(rollout_id)
    assert again == stored
    deployment_id = again.waves[0].deployment_id
    assert deployment_id is not None
    assert (await fleet.get_deployment(deployment_id)).device_ids == ("d1", "d2")
    assert (await fleet.get_device("d1")).assigned == {"mnist": {"version": 2}}
    assert again.previous == {"d1": 1, "d2": None}
    actions = [d.action for d in await fleet.rollout_decisions(rollout_id)]
    assert actions == ["started", "wave_started"]

    # A rollback of the same wave is recorded among its rollbacks.
    back = moving(("d1",), seq=2, kind="rollback")
    halted = replace(again, state="halted", halt={"gate": "install", "measured": 100.0})
    final = await fleet.update_rollout(halted, [back], [decision("halted")])
    assert len(final.waves[0].rollbacks) == 1
    assert (await fleet.get_rollout(rollout_id)).halt == {"gate": "install", "measured": 100.0}
    assert await fleet.rollouts(active=True) == []


async def test_a_change_from_an_old_step_stores_nothing(fleet: Storage) -> None:
    rollout_id = await fleet.add_rollout(rollout(), decision("started"))
    read = await fleet.get_rollout(rollout_id)
    await fleet.update_rollout(replace(read, state="paused"), [], [decision("paused")])
    wave = RolloutWave(0, 50.0, ("d1",), T0)
    stale = replace(read, waves=(wave,))  # still at step 0: another change came first
    with pytest.raises(ConflictError, match="changed meanwhile"):
        await fleet.update_rollout(stale, [moving(("d1",))], [decision("wave_started")])
    assert await fleet.deployments() == []
    assert (await fleet.get_device("d1")).assignment_seq == 0
    assert [d.action for d in await fleet.rollout_decisions(rollout_id)] == ["started", "paused"]
    assert (await fleet.get_rollout(rollout_id)).state == "paused"


async def test_a_refused_assignment_stores_no_change_of_the_rollout(fleet: Storage) -> None:
    rollout_id = await fleet.add_rollout(rollout(), decision("started"))
    await fleet.set_assignment("d2", 5, b"later", {})
    read = await fleet.get_rollout(rollout_id)
    changed = replace(read, waves=(RolloutWave(0, 50.0, ("d1", "d2"), T0),))
    with pytest.raises(ConflictError, match="does not grow"):
        await fleet.update_rollout(changed, [moving(("d1", "d2"))], [decision("wave_started")])
    assert (await fleet.get_rollout(rollout_id)) == read
    assert await fleet.deployments() == []


async def test_one_active_rollout_per_model_and_group(fleet: Storage) -> None:
    first = await fleet.add_rollout(rollout(), decision("started"))
    with pytest.raises(ConflictError, match=f"rollout {first} of 'mnist' to group 'lab'"):
        await fleet.add_rollout(rollout(), decision("started"))
    other_group = await fleet.add_rollout(rollout(group="field"), decision("started"))
    read = await fleet.get_rollout(first)
    await fleet.update_rollout(replace(read, state="completed"), [], [decision("completed")])
    again = await fleet.add_rollout(rollout(), decision("started"))
    assert [r.rollout_id for r in await fleet.rollouts(active=True)] == [again, other_group]
    assert [r.rollout_id for r in await fleet.rollouts()] == [again, other_group, first]


async def test_unknown_rollouts_and_releases_are_named(fleet: Storage) -> None:
    with pytest.raises(NotFoundError, match="no rollout 7"):
        await fleet.get_rollout(7)
    with pytest.raises(NotFoundError, match="no rollout 7"):
        await fleet.rollout_decisions(7)
    with pytest.raises(NotFoundError, match="has no version 9"):
        await fleet.add_rollout(rollout(version=9), decision("started"))
    with pytest.raises(NotFoundError, match="no rollout 7"):
        await fleet.update_rollout(rollout(rollout_id=7), [], [])
