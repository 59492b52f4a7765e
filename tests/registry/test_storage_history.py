"""Both storages on the dashboard's records: resource points stored once with their report,
replaced by slices, pruned and removed with their device; history marks; the liveness columns
the fleet listing filters on (the `storage` and `backend` fixtures of test_storage)."""

from __future__ import annotations

from datetime import timedelta

from model_registry.statistics.resources import point_from_telemetry
from model_registry.storage import DUPLICATE, STORED, DeviceReport, ResourcePoint, Storage
from tests.support.storage_records import T0, device

TELEMETRY = {
    "interval_s": 30.0,
    "resources": {
        "rss_bytes": 1000,
        "cpu_seconds": 3.0,
        "disk_free_bytes": 750,
        "disk_total_bytes": 1000,
    },
}


def telemetry(seq: int, device_id: str = "d1") -> DeviceReport:
    received = T0 + timedelta(seconds=30 * seq)
    return DeviceReport(
        device_id,
        "telemetry",
        received,
        {**TELEMETRY, "msg_seq": seq},
        msg_epoch="e1",
        msg_seq=seq,
        resources=point_from_telemetry(device_id, received, TELEMETRY),
    )


async def test_a_resource_point_is_stored_once_with_its_report(storage: Storage) -> None:
    await storage.add_device(device("d1"))
    outcomes = await storage.add_device_reports([telemetry(1), telemetry(1), telemetry(2)])
    assert outcomes == [STORED, DUPLICATE, STORED]
    points = await storage.resource_points(T0, T0 + timedelta(hours=1))
    assert [(p.at, p.rss_bytes, p.cpu_seconds) for p in points] == [
        (T0 + timedelta(seconds=30), 1000.0, 3.0),
        (T0 + timedelta(seconds=60), 1000.0, 3.0),
    ]
    assert points[0].disk_reports == 1
    assert points[0].disk_free_bytes == 750.0


async def test_replace_touches_only_the_slice_and_the_devices_named(storage: Storage) -> None:
    for device_id in ("d1", "d2"):
        await storage.add_device(device(device_id))
        await storage.add_device_reports([telemetry(n, device_id) for n in range(1, 5)])
    since, until = T0, T0 + timedelta(seconds=90)  # reports 1 and 2 of each device
    old = await storage.resource_points(since, until, ["d1"])
    assert len(old) == 2
    merged = ResourcePoint("d1", T0, 60.0, 2, 2000.0, 2, 6.0, 1500.0, 2000.0, 2)
    await storage.replace_resource_points(since, until, ["d1"], [merged])
    d1 = await storage.resource_points(T0, T0 + timedelta(hours=1), ["d1"])
    assert [p.reports for p in d1] == [2, 1, 1]
    assert d1[0] == merged
    d2 = await storage.resource_points(T0, T0 + timedelta(hours=1), ["d2"])
    assert len(d2) == 4


async def test_points_are_pruned_by_age_and_go_with_their_device(storage: Storage) -> None:
    for device_id in ("d1", "d2"):
        await storage.add_device(device(device_id))
        await storage.add_device_reports([telemetry(n, device_id) for n in range(1, 5)])
    assert await storage.prune_resource_points(T0 + timedelta(seconds=61)) == 4
    await storage.remove_device("d2")
    left = await storage.resource_points(T0, T0 + timedelta(hours=1))
    assert {(p.device_id, p.at) for p in left} == {
        ("d1", T0 + timedelta(seconds=90)),
        ("d1", T0 + timedelta(seconds=120)),
    }


async def test_history_marks_are_kept_per_name(storage: Storage) -> None:
    assert await storage.history_mark("resources:minute") is None
    await storage.set_history_mark("resources:minute", T0)
    await storage.set_history_mark("resources:minute", T0 + timedelta(hours=1))
    await storage.set_history_mark("resources:hour", T0)
    assert await storage.history_mark("resources:minute") == T0 + timedelta(hours=1)
    assert await storage.history_mark("resources:hour") == T0


async def test_liveness_columns_follow_the_states(storage: Storage) -> None:
    await storage.add_device(device("d1", group="lab"))
    await storage.add_device(device("d2", group="field"))
    state = {"online": True, "telemetry_interval_s": 5}
    await storage.add_device_reports([DeviceReport("d1", "state", T0, state)])
    await storage.record_state("d2", {"telemetry_interval_s": "soon"}, True, T0)
    fleet = {d.device_id: d for d in await storage.device_liveness()}
    assert (fleet["d1"].group, fleet["d1"].online, fleet["d1"].last_seen) == ("lab", True, T0)
    assert fleet["d1"].telemetry_interval_s == 5.0
    assert fleet["d2"].telemetry_interval_s is None  # not a number: the fleet rules' default
    found = await storage.devices_by_id(["d2", "ghost", "d1"])
    assert [d.device_id for d in found] == ["d1", "d2"]
