"""Both storages on experiments: stored with their assignments in one transaction, ended once."""

from __future__ import annotations

from datetime import timedelta

import pytest

from model_registry.errors import ConflictError, NotFoundError
from model_registry.storage import AssignmentUpdate, ExperimentRecord, Storage
from tests.support.storage_records import T0, device, release


def experiment(**changes: object) -> ExperimentRecord:
    record = ExperimentRecord(
        experiment_id=0, name="mnist-1-vs-2", model="mnist", mode="split", control=1,
        candidate=2, split_percent=10, target_kind="group", target="lab",
        device_ids=("d1", "d2"), created=T0.replace(microsecond=0), created_by="admin",
    )  # fmt: skip
    return ExperimentRecord(**{**record.__dict__, **changes})  # type: ignore[arg-type]


@pytest.fixture
async def lab(storage: Storage) -> Storage:
    await storage.add_release(release(version=1))
    await storage.add_release(release(version=2))
    for device_id in ("d1", "d2"):
        await storage.add_device(device(device_id))
    return storage


def _update(device_id: str, seq: int, entry: dict[str, object]) -> AssignmentUpdate:
    return AssignmentUpdate(device_id, seq, b"signed %d" % seq, {"mnist": entry})


async def test_an_experiment_is_stored_with_its_assignments_and_ended_once(lab: Storage) -> None:
    started = {"version": 1, "experiment": {"id": 1}}
    first = await lab.add_experiment(experiment(), [_update("d1", 1, started)])
    second = await lab.add_experiment(experiment(mode="shadow", split_percent=0))
    assert (await lab.get_experiment(first)) == experiment(experiment_id=first)
    assert [e.experiment_id for e in await lab.experiments()] == [second, first]
    assert [e.experiment_id for e in await lab.experiments("other")] == []
    assert (await lab.get_device("d1")).assigned == {"mnist": started}

    ended = T0.replace(microsecond=0) + timedelta(hours=1)
    stopped = await lab.end_experiment(
        first, "stopped", ended, "stopped by admin", [_update("d1", 2, {"version": 1})]
    )
    assert (stopped.status, stopped.ended, stopped.outcome) == (
        "stopped",
        ended,
        "stopped by admin",
    )
    assert (await lab.get_device("d1")).assigned == {"mnist": {"version": 1}}
    with pytest.raises(ConflictError, match="is stopped already"):
        await lab.end_experiment(first, "promoted", ended, "again")


async def test_a_refused_assignment_stores_no_experiment(lab: Storage) -> None:
    await lab.set_assignment("d1", 5, b"earlier", {})
    with pytest.raises(ConflictError):
        await lab.add_experiment(experiment(), [_update("d1", 3, {"version": 1})])
    assert await lab.experiments() == []
    with pytest.raises(NotFoundError, match="no experiment 1"):
        await lab.get_experiment(1)


async def test_assignments_are_stored_all_or_none(lab: Storage) -> None:
    await lab.set_assignment("d2", 5, b"earlier", {})
    with pytest.raises(ConflictError):
        await lab.set_assignments([_update("d1", 1, {"version": 1}), _update("d2", 2, {})])
    assert (await lab.get_device("d1")).assignment_seq == 0
    await lab.set_assignments([_update("d1", 1, {"version": 1}), _update("d2", 6, {})])
    assert (await lab.get_device("d2")).assignment_seq == 6
