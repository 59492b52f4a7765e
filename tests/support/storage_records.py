"""Records for the storage tests: one release, device and deployment, changed per test."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from model_registry.storage import DeploymentRecord, DeviceRecord, ReleaseRecord

T0 = datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
SHA = "ab" * 32


def release(model: str = "mnist", version: int = 1, **changes: Any) -> ReleaseRecord:
    record = ReleaseRecord(
        model=model,
        version=version,
        label=f"v{version}",
        sha256=SHA,
        size=1234,
        created=T0 + timedelta(minutes=version),
        expires=T0 + timedelta(days=30),
        envelope=b'{"signed": "release %d"}' % version,
        build={"quantized": True, "opset": 17},
    )
    return replace(record, **changes)


def device(device_id: str = "d1", group: str = "lab", **changes: Any) -> DeviceRecord:
    return replace(DeviceRecord(device_id, group, T0, "pbkdf2$hash"), **changes)


def deployment(device_ids: tuple[str, ...] = ("d1",), **changes: Any) -> DeploymentRecord:
    record = DeploymentRecord(
        deployment_id=0,
        model="mnist",
        version=1,
        target_kind="devices",
        target=",".join(device_ids),
        device_ids=device_ids,
        created=T0,
        deadline=T0 + timedelta(minutes=10),
        created_by="admin",
    )
    return replace(record, **changes)
