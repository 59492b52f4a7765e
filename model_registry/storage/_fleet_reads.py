"""The fleet listing's reads, as steps both backends run (see `_db`).

The listing filters on the liveness columns of `devices` alone, never the states, so that
filtering 10,000 devices stays cheap; only the page it shows is read whole.
"""

from __future__ import annotations

from collections.abc import Sequence

from model_registry.storage._db import Query, Steps, optional_from_text
from model_registry.storage._fleet import _SELECT_DEVICES, _device
from model_registry.storage._history import IN_CLAUSE_LIMIT
from model_registry.storage.base import DeviceRecord
from model_registry.storage.history_records import DeviceLiveness


def device_liveness() -> Steps[list[DeviceLiveness]]:
    """Return every device's group, online flag, last sighting and reporting interval, by id."""
    result = yield Query(
        "SELECT device_id, device_group, online, last_seen, telemetry_interval_s FROM devices"
        " ORDER BY device_id"
    )
    return [
        DeviceLiveness(
            row["device_id"],
            row["device_group"],
            bool(row["online"]),
            optional_from_text(row["last_seen"]),
            row["telemetry_interval_s"],
        )
        for row in result.rows
    ]


def devices_by_id(device_ids: Sequence[str]) -> Steps[list[DeviceRecord]]:
    """Return the devices with these ids, by id; unknown ids are left out."""
    found: list[DeviceRecord] = []
    for start in range(0, len(device_ids), IN_CLAUSE_LIMIT):
        chunk = device_ids[start : start + IN_CLAUSE_LIMIT]
        marks = ",".join("?" * len(chunk))
        result = yield Query(_SELECT_DEVICES + f" WHERE device_id IN ({marks})", chunk)
        found += [_device(row) for row in result.rows]
    return sorted(found, key=lambda d: d.device_id)
