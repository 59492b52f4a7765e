"""Drift in the registry: PSI against the release's profile, statuses and their records, on
both storages; what does not fit the profile is counted and left out."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_protocol import Bins, InputProfile, OutputProfile, Profile
from model_registry.config import DriftConfig, load_config
from model_registry.errors import ConfigError, InvalidInputError
from model_registry.services.device_messages import MessageLimits, clean_message
from model_registry.services.drift import (
    ALERT,
    BIN_COUNTS,
    INSUFFICIENT,
    NO_PROFILE,
    NOT_COUNTS,
    OK,
    WARN,
    DriftLimits,
    drift_rows,
    parse_window,
    prediction_drift,
    window_drift,
)
from model_registry.services.drift_watch import CLEARED, RISEN, DriftWatch
from model_registry.statistics.points import points_from_telemetry
from model_registry.statistics.window import VersionWindow
from model_registry.storage import DeviceReport, DriftRecord, Storage, VersionPoint
from tests.protocol.factory import Registry
from tests.support.storage_records import T0, device, release

PROFILE = Profile(
    rows=100,
    inputs={
        "input": InputProfile((Bins((-1.0, 0.0, 1.0), (25, 25, 25, 25)), Bins((0.0,), (50, 50))))
    },
    output=OutputProfile("label", classes={"0": 50, "1": 50}),
)
LIMITS = DriftLimits(warn_psi=0.1, alert_psi=0.25, min_samples=50)


def _window(detail: dict[str, Any], devices: int = 1) -> VersionWindow:
    return VersionWindow(
        "iris", 1, frozenset(f"d{i}" for i in range(devices)), 1, 0, 0, 0, 0, 0, 0,
        None, None, None, detail,
    )  # fmt: skip


def test_psi_and_the_cdf_gap_on_known_numbers() -> None:
    detail = {
        "bins": {"input": [[10, 20, 30, 40], [50, 50]]},
        "predictions": {"output": "label", "classes": {"0": 30, "1": 60, "2": 10}},
    }
    rows = {r.feature: r for r in window_drift(_window(detail), PROFILE, LIMITS, "d0")}
    # Shares 0.1 0.2 0.3 0.4 against 0.25 each: sum of (o - e) * ln(o / e).
    by_hand = (
        -0.15 * math.log(0.4) - 0.05 * math.log(0.8) + 0.05 * math.log(1.2) + 0.15 * math.log(1.6)
    )
    assert by_hand == pytest.approx(0.228217, abs=1e-6)
    assert rows["input[0]"].psi == pytest.approx(by_hand, rel=1e-9)
    assert rows["input[0]"].max_cdf_gap == pytest.approx(0.2)  # 0.5 against 0.3 after bin 2
    assert rows["input[0]"].status == WARN
    assert rows["input[1]"].psi == 0.0
    assert rows["input[1]"].status == OK
    # A class the reference never predicted is a bin of its own, its share floored at 1e-4
    # (then renormalized) before the log: PSI stays finite but large.
    e = [0.5 / 1.0001, 0.5 / 1.0001, 0.0001 / 1.0001]
    o = [0.3, 0.6, 0.1]
    expected_psi = sum((oi - ei) * math.log(oi / ei) for ei, oi in zip(e, o, strict=True))
    assert rows["predictions"].psi == pytest.approx(expected_psi, rel=1e-9)
    assert rows["predictions"].status == ALERT
    assert rows["predictions"].samples == 100


def test_a_window_below_the_minimum_is_not_judged() -> None:
    detail = {"bins": {"input": [[1, 0, 0, 0], [1, 0]]}}
    rows = window_drift(_window(detail), PROFILE, LIMITS, None)
    assert {r.status for r in rows} == {INSUFFICIENT}
    assert rows[0].psi is not None
    assert rows[0].psi > 1  # shown, but not judged


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800), ("600", 600)]
)
def test_windows_are_durations(text: str, seconds: int) -> None:
    assert parse_window(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1w", "-1h", "59s", "31d", "1.5h", "h", "1e3", "\u0661h"])
def test_a_window_that_is_no_duration_is_refused(text: str) -> None:
    with pytest.raises(InvalidInputError, match="window"):
        parse_window(text)


# --- on both storages --------------------------------------------------------------------


async def _setup(storage: Storage, profile: Profile | None = PROFILE) -> None:
    registry = Registry()
    signed = registry.release(profile=profile)
    envelope = registry.release_bytes(signed)
    await storage.add_release(release("iris", 1, envelope=envelope))
    for name in ("d1", "d2", "d3"):
        await storage.add_device(device(name))


def _point(device_id: str, minute: int, **detail: Any) -> VersionPoint:
    return VersionPoint(
        "iris", 1, device_id, T0 + timedelta(minutes=minute), 30.0, 100, 100, 0, 0, 0,
        detail=detail,
    )  # fmt: skip


async def _report(storage: Storage, seq: int, *points: VersionPoint) -> None:
    reports = [
        DeviceReport(p.device_id, "telemetry", p.at, {"n": seq}, msg_epoch="e", msg_seq=seq + i,
                     points=(p,))
        for i, p in enumerate(points)
    ]  # fmt: skip
    await storage.add_device_reports(reports)


STEADY = {"input": [[25, 25, 25, 25], [50, 50]]}
SHIFTED = {"input": [[0, 0, 10, 90], [50, 50]]}
CLASSES = {"output": "label", "classes": {"0": 50, "1": 50}}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_an_alert_names_the_feature_and_the_device_and_clears_again(
    storage: Storage,
) -> None:
    await _setup(storage)
    await _report(
        storage, 1,
        _point("d1", 0, bins=STEADY, predictions=CLASSES),
        _point("d2", 0, bins=SHIFTED, predictions=CLASSES),
        _point("d3", 0, bins=STEADY, predictions=CLASSES),
    )  # fmt: skip
    clock = Clock(T0 + timedelta(minutes=1))
    watch = DriftWatch(storage, DriftConfig(window_s=600, min_samples=50), clock)
    changes = await watch.judge()
    risen = {(c.device_id, c.feature, c.kind, c.status) for c in changes}
    # d2 alone is far off; the fleet together (one device in three) moderately.
    assert risen == {("d2", "input[0]", RISEN, ALERT), (None, "input[0]", RISEN, WARN)}
    assert await watch.judge() == []  # nothing changed: nothing recorded
    assert watch.fleet[("iris", 1, "input[0]")].devices == 3

    # An hour later only steady reports are in the window: the alert clears.
    await _report(storage, 10, _point("d2", 70, bins=STEADY, predictions=CLASSES))
    clock.now = T0 + timedelta(minutes=71)
    cleared = await watch.judge()
    assert {(c.device_id, c.feature, c.kind, c.status, c.previous) for c in cleared} == {
        ("d2", "input[0]", CLEARED, OK, ALERT),
        (None, "input[0]", CLEARED, OK, WARN),
    }
    history = await storage.drift_records("iris")
    assert [r.kind for r in history] == [CLEARED, CLEARED, RISEN, RISEN]
    statuses = {(r.device_id, r.feature): r.status for r in await storage.drift_statuses("iris")}
    assert statuses == {("d2", "input[0]"): OK, (None, "input[0]"): OK}


async def test_counts_that_do_not_fit_the_profile_are_counted_and_left_out(
    storage: Storage,
) -> None:
    await _setup(storage)
    await _report(
        storage, 1,
        _point("d1", 0, bins={"input": [[25, 25, 25], [50, 50]]}),  # a bin too few
        _point("d2", 0, bins={"other": [[1, 2]]}),  # an input the profile lacks
        _point("d3", 0, bins={"input": [[25, 25, 25, 25], [50, 50]]},
               predictions={"output": "label", "classes": {"0": -5}}),  # not a count
    )  # fmt: skip
    watch = DriftWatch(storage, DriftConfig(min_samples=1), Clock(T0 + timedelta(minutes=1)))
    assert await watch.judge() == []
    assert watch.ignored == {BIN_COUNTS: 1, NO_PROFILE: 1, NOT_COUNTS: 1}
    rows = await drift_rows(storage, "iris", T0, LIMITS, device_id="d1")
    assert {r.samples for r in rows} == {0}  # the bad counts are not in the window
    await watch.judge()
    assert watch.ignored == {BIN_COUNTS: 1, NO_PROFILE: 1, NOT_COUNTS: 1}, "counted once"


async def test_bins_for_a_release_without_a_profile_are_foreign(storage: Storage) -> None:
    await _setup(storage, profile=None)
    await _report(storage, 1, _point("d1", 0, bins=STEADY, predictions=CLASSES))
    watch = DriftWatch(storage, DriftConfig(), Clock(T0 + timedelta(minutes=1)))
    assert await watch.judge() == []
    assert watch.ignored == {NO_PROFILE: 1}
    assert await prediction_drift(storage, "iris", 1, T0) is None


async def test_prediction_drift_of_a_version_on_some_devices(storage: Storage) -> None:
    await _setup(storage)
    skewed = {"output": "label", "classes": {"0": 90, "1": 10}}
    await _report(
        storage, 1,
        _point("d1", 0, predictions=CLASSES),
        _point("d2", 0, predictions=skewed),
    )  # fmt: skip
    on_d1 = await prediction_drift(storage, "iris", 1, T0, device_ids=["d1"], limits=LIMITS)
    on_d2 = await prediction_drift(storage, "iris", 1, T0, device_ids=["d2"], limits=LIMITS)
    assert on_d1 is not None
    assert (on_d1.psi, on_d1.status) == (0.0, OK)
    assert on_d2 is not None
    assert (on_d2.status, on_d2.samples) == (ALERT, 100)
    both = await prediction_drift(storage, "iris", 1, T0, limits=LIMITS)
    assert both is not None
    assert (both.samples, both.devices) == (200, 2)


async def test_drift_records_round_trip_and_go_with_their_device(storage: Storage) -> None:
    await _setup(storage)
    record = DriftRecord("iris", 1, "d1", "input[0]", RISEN, WARN, OK, T0, 0.12, 0.2, 300)
    fleet = DriftRecord("iris", 1, None, "input[0]", RISEN, ALERT, OK, T0, None, None, 0)
    await storage.add_drift_records([record, fleet])
    stored = await storage.drift_records("iris")
    assert [r.device_id for r in stored] == [None, "d1"]
    assert stored[1].psi == 0.12
    assert stored[1].at == T0
    await storage.remove_device("d1")
    assert [r.device_id for r in await storage.drift_records("iris")] == [None]


# --- at ingest ---------------------------------------------------------------------------


def test_negative_bin_counts_are_left_out_of_the_points_and_counted() -> None:
    body = {
        "interval_s": 1.0,
        "models": {
            "iris": {
                "versions": {
                    "1": {
                        "requests": 3, "2xx": 3, "4xx": 0, "5xx": 0, "rejected_503": 0,
                        "bins": {"input": [[1, -2, 3, 1], [1, 2]]},
                        "predictions": {"output": "label", "classes": {"0": 3}},
                    }
                }
            }
        },
    }  # fmt: skip
    left_out: Counter[str] = Counter()
    (point,) = points_from_telemetry("d1", T0, body, left_out)
    assert "bins" not in point.detail
    assert point.detail["predictions"] == {"output": "label", "classes": {"0": 3}}
    assert left_out == {"bins": 1}


def test_a_report_still_over_the_cap_without_features_loses_its_bins() -> None:
    wide = [[1000] * 16] * 64
    versions = {"1": {"requests": 1, "bins": {"X": wide}, "predictions": {"classes": {"a": 1}}}}
    body = {"schema": 1, "device_id": "d1", "models": {"m": {"versions": versions}}}
    limits = MessageLimits(max_telemetry_bytes=4096)
    stored = clean_message("telemetry", body, limits)
    assert stored["bins_dropped"] is True
    assert stored["models"]["m"]["versions"]["1"] == {
        "requests": 1, "predictions": {"classes": {"a": 1}}
    }  # fmt: skip
    assert "bins" in body["models"]["m"]["versions"]["1"], "the parsed message is not changed"


def test_drift_limits_are_checked_where_they_are_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="warn_psi <= alert_psi"):
        DriftConfig(warn_psi=0.3, alert_psi=0.2)
    with pytest.raises(ConfigError, match="window_s"):
        DriftConfig(window_s=10)
    (tmp_path / "registry.toml").write_text("[drift]\nalert_psi = 1\nwarn_psi = 0.5\n")
    assert load_config(tmp_path).drift.alert_psi == 1
    (tmp_path / "registry.toml").write_text('[drift]\nalert_psi = "high"\n')
    with pytest.raises(ConfigError, match=r"drift\.alert_psi must be a number"):
        load_config(tmp_path)


async def test_retention_keeps_each_status_s_latest_record(storage: Storage) -> None:
    await _setup(storage)
    old, new = T0, T0 + timedelta(days=100)
    await storage.add_drift_records(
        [
            DriftRecord("iris", 1, "d1", "input[0]", RISEN, ALERT, OK, old, 0.4, 0.3, 300),
            DriftRecord("iris", 1, "d1", "input[0]", CLEARED, OK, ALERT, old, 0.01, 0.0, 300),
            DriftRecord("iris", 1, "d2", "input[0]", RISEN, WARN, OK, old, 0.2, 0.1, 300),
            DriftRecord("iris", 1, "d2", "input[1]", RISEN, WARN, OK, new, 0.2, 0.1, 300),
        ]
    )
    assert await storage.prune_drift_records(T0 + timedelta(days=10)) == 1
    kept = {(r.device_id, r.feature, r.kind) for r in await storage.drift_records("iris")}
    assert kept == {
        ("d1", "input[0]", CLEARED),
        ("d2", "input[0]", RISEN),
        ("d2", "input[1]", RISEN),
    }
