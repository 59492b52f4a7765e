"""Version points stored with their telemetry, on both backends, and the windows over them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from model_registry.statistics.points import points_from_telemetry
from model_registry.statistics.window import (
    aggregate,
    series,
    window,
    windows_by_device,
    windows_by_version,
)
from model_registry.storage import DUPLICATE, STORED, DeviceReport, Storage
from tests.support.storage_records import T0, device


def version_numbers(
    requests: int, errors: int = 0, p99: float = 4.0, **detail: Any
) -> dict[str, Any]:
    return {
        "requests": requests,
        "2xx": requests - errors,
        "4xx": 0,
        "5xx": errors,
        "rejected_503": 0,
        "latency_ms": {"p50": p99 / 2, "p95": p99, "p99": p99, "max": p99 + 1, "samples": requests},
        **detail,
    }


def telemetry(seq: int, versions: dict[str, Any], device_id: str = "d1") -> dict[str, Any]:
    return {
        "schema": 1,
        "device_id": device_id,
        "msg_seq": seq,
        "msg_epoch": "boot-1",
        "interval_s": 30.0,
        "models": {
            "iris": {"versions": versions},
            "_unknown": {"versions": {"none": {"requests": 1}}},
        },
    }


def report(
    seq: int, versions: dict[str, Any], device_id: str = "d1", minute: int = 0
) -> DeviceReport:
    body = telemetry(seq, versions, device_id)
    received = T0 + timedelta(minutes=minute)
    points = points_from_telemetry(device_id, received, body)
    return DeviceReport(
        device_id, "telemetry", received, body, msg_epoch="boot-1", msg_seq=seq, points=points
    )


def test_points_take_each_numbered_version_and_keep_counts_as_detail() -> None:
    body = telemetry(
        1,
        {
            "2": version_numbers(
                10, 1, predictions={"output": "label", "classes": {"0": 7, "1": 3}}
            ),
            "0": version_numbers(5),  # not a version
            "x": version_numbers(5),
            "3": {"requests": -1},  # a negative count: no point rather than a wrong one
            "4": version_numbers(2, bogus={"a": -5}, text="fine"),
        },
    )
    points = points_from_telemetry("d1", T0, body)
    assert [(p.model, p.version) for p in points] == [("iris", 2), ("iris", 4)]
    first = points[0]
    assert (first.requests, first.ok, first.server_errors, first.latency_samples) == (10, 9, 1, 10)
    assert first.latency_p99_ms == 4.0
    assert first.interval_s == 30.0
    assert first.detail == {"predictions": {"output": "label", "classes": {"0": 7, "1": 3}}}
    assert points[1].detail == {"text": "fine"}  # the negative counts are left out
    assert points_from_telemetry("d1", T0, {"models": "nonsense"}) == ()


async def test_points_are_stored_once_with_their_report(storage: Storage) -> None:
    await storage.add_device(device("d1"))
    first = report(1, {"2": version_numbers(10, 1)})
    assert await storage.add_device_reports([first, first]) == [STORED, DUPLICATE]
    points = await storage.version_points("iris", T0)
    assert points == list(first.points)


async def test_windows_by_version_device_and_time(storage: Storage) -> None:
    for name in ("d1", "d2"):
        await storage.add_device(device(name))
    classes = {"output": "label", "classes": {"0": 6, "1": 4}}
    await storage.add_device_reports(
        [
            report(1, {"1": version_numbers(10, 0, p99=2.0, predictions=classes)}, "d1", minute=0),
            report(2, {"2": version_numbers(30, 3, p99=6.0, predictions=classes)}, "d1", minute=1),
            report(1, {"2": version_numbers(10, 1, p99=2.0)}, "d2", minute=2),
            report(2, {"2": version_numbers(10, 0, p99=2.0)}, "d2", minute=11),
        ]
    )
    v2 = await window(storage, "iris", 2, T0, until=T0 + timedelta(minutes=10))
    assert v2 is not None
    assert (v2.requests, v2.server_errors, v2.reports, v2.devices) == (40, 4, 2, {"d1", "d2"})
    assert v2.server_error_rate == 0.1
    assert v2.latency_p99_ms == (30 * 6.0 + 10 * 2.0) / 40  # weighted by samples
    assert v2.latency_max_ms == 7.0
    assert v2.detail == {"predictions": classes}
    only_d2 = await window(storage, "iris", 2, T0, device_ids=["d2"])
    assert only_d2 is not None
    assert only_d2.requests == 20
    assert await window(storage, "iris", 3, T0) is None
    by_version = await windows_by_version(storage, "iris", T0)
    assert {v: w.requests for v, w in by_version.items()} == {1: 10, 2: 50}
    by_device = await windows_by_device(storage, "iris", T0, version=2)
    assert {k: w.requests for k, w in by_device.items()} == {("d1", 2): 30, ("d2", 2): 20}
    steps = await series(storage, "iris", T0, T0 + timedelta(minutes=15), timedelta(minutes=5))
    assert [(start - T0, {v: w.requests for v, w in ws.items()}) for start, ws in steps] == [
        (timedelta(0), {1: 10, 2: 40}),
        (timedelta(minutes=10), {2: 10}),
    ]


async def test_a_detail_of_another_shape_is_counted_not_merged(storage: Storage) -> None:
    await storage.add_device(device("d1"))
    await storage.add_device_reports(
        [
            report(1, {"2": version_numbers(5, bins={"X": [[1, 2]]})}),
            report(2, {"2": version_numbers(5, bins={"X": [[1, 2, 3]]})}),
        ]
    )
    merged = aggregate(await storage.version_points("iris", T0))
    assert merged is not None
    assert (merged.requests, merged.detail, merged.mismatched) == (10, {"bins": {"X": [[1, 2]]}}, 1)


async def test_points_are_pruned_by_age_and_removed_with_their_device(storage: Storage) -> None:
    for name in ("d1", "d2"):
        await storage.add_device(device(name))
    await storage.add_device_reports(
        [
            report(1, {"2": version_numbers(1)}, "d1", minute=0),
            report(2, {"2": version_numbers(1)}, "d1", minute=5),
            report(1, {"2": version_numbers(1)}, "d2", minute=5),
        ]
    )
    assert await storage.prune_version_points(T0 + timedelta(minutes=1)) == 1
    await storage.remove_device("d2")
    assert [(p.device_id, p.at - T0) for p in await storage.version_points("iris", T0)] == [
        ("d1", timedelta(minutes=5))
    ]
