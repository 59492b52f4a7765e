"""The per-device deployment status rules, case by case on records (services/fleet.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from model_registry.services.fleet import device_progress
from model_registry.storage import DeploymentRecord, DeviceMessageRecord, DeviceRecord

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DEADLINE = T0 + timedelta(minutes=10)
V = 2  # the deployed version
DEPLOYMENT = DeploymentRecord(1, "clf", V, "group", "lab", ("dev-1",), T0, DEADLINE, "test")

# --- the rules, one case each -------------------------------------------------------------


def _device(active: int | None = None, phase: str = "idle", assigned: int = V) -> DeviceRecord:
    state = None
    if active is not None:
        state = {"models": {"clf": {"active": {"version": active}, "phase": phase}}}
    return DeviceRecord("dev-1", "lab", T0, "hash", assigned={"clf": {"version": assigned}},
                        state=state)  # fmt: skip


def _event(
    event: str, version: int | None = V, model: str | None = "clf", **extra: Any
) -> dict[str, Any]:
    body = {"event": event, "version": version, "model": model, **extra}
    return {k: v for k, v in body.items() if v is not None}


AFTER, LATE = T0 + timedelta(minutes=1), DEADLINE + timedelta(seconds=1)
FAILED = _event("rejected", reason="chunk_hash", detail="chunk 3")
# name, device, events (oldest first), now, expected (status, reason)
RULES: list[tuple[str, DeviceRecord, list[dict[str, Any]], datetime, tuple[str, str | None]]] = [
    ("nothing-yet", _device(), [], AFTER, ("pending", None)),
    ("received", _device(active=1), [_event("received")], AFTER, ("downloading", None)),
    ("downloading", _device(active=1), [_event("received"), _event("downloading")], AFTER,
     ("downloading", None)),
    ("runs-it", _device(active=V), [_event("activated")], AFTER, ("activated", None)),
    ("ran-it-already", _device(active=V), [], AFTER, ("activated", None)),
    ("in-probation", _device(active=V, phase="probation"), [_event("activated")], AFTER,
     ("probation", None)),
    ("swapped-before-probation", _device(active=V, phase="loading"), [], AFTER,
     ("probation", None)),
    ("runs-it-while-fetching-a-newer-one", _device(active=V, phase="downloading", assigned=3), [],
     AFTER, ("activated", None)),
    ("ran-it-then-moved-on", _device(active=3, assigned=3), [_event("activated")], AFTER,
     ("activated", None)),
    ("rejected", _device(active=1), [_event("received"), FAILED], AFTER, ("failed", "chunk_hash")),
    ("failed", _device(active=1), [_event("failed", reason="selftest_mismatch")], AFTER,
     ("failed", "selftest_mismatch")),
    ("rolled-back", _device(active=1), [_event("activated"),
     _event("rolled_back", reason="probation_failed")], AFTER, ("rolled_back", "probation_failed")),
    ("other-version-ignored", _device(active=1), [_event("failed", version=1)], AFTER,
     ("pending", None)),
    ("other-model-ignored", _device(active=1), [_event("failed", model="other")], AFTER,
     ("pending", None)),
    ("model-less-rejection-ignored", _device(), [_event("rejected", version=None, model=None)],
     AFTER, ("pending", None)),
    ("never-reported-by-the-deadline", _device(), [], LATE, ("silent", "deadline_passed")),
    ("stuck-downloading-at-the-deadline", _device(active=1), [_event("downloading")], LATE,
     ("silent", "deadline_passed")),
    ("failed-stays-failed", _device(active=1), [FAILED], LATE, ("failed", "chunk_hash")),
    ("late-activation-counts", _device(active=V), [], LATE, ("activated", None)),
    ("superseded", _device(assigned=3), [], AFTER, ("superseded", "superseded")),
    ("superseded-wins-over-silent", _device(assigned=3), [], LATE, ("superseded", "superseded")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("device", "events", "now", "expected"), [c[1:] for c in RULES], ids=[c[0] for c in RULES]
)
def test_device_status_rules(
    device: DeviceRecord,
    events: list[dict[str, Any]],
    now: datetime,
    expected: tuple[str, str | None],
) -> None:
    records = [DeviceMessageRecord("dev-1", AFTER, body) for body in events]
    progress = device_progress(DEPLOYMENT, device, records, now)
    assert (progress.status, progress.reason) == expected


def test_untrusted_state_shapes_do_not_break_the_rules() -> None:
    shapes: list[dict[str, Any]] = [
        {"models": []}, {"models": {"clf": 5}}, {"models": {"clf": {"active": "x"}}},
    ]  # fmt: skip
    for state in shapes:
        device = replace(_device(), state=state)
        assert device_progress(DEPLOYMENT, device, [], AFTER).status == "pending"
