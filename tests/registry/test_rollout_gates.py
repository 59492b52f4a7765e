"""Each halt gate on its own: install outcomes, 5xx rate, p99 latency, prediction shift."""

from __future__ import annotations

from datetime import timedelta

import pytest

from model_registry.rollouts.gates import Verdict, install_gate, settled
from model_registry.rollouts.health import judge
from model_registry.rollouts.policy import RolloutPolicy
from model_registry.services.fleet import DeviceProgress
from model_registry.storage.base import VersionPoint
from tests.support.storage_records import T0, device

POLICY = RolloutPolicy(min_requests=20, max_failure_percent=10, min_reported=2)


def _progress(*statuses: str) -> list[DeviceProgress]:
    return [
        DeviceProgress(device(f"d{i}"), status, reason="probation_latency" if status != "activated"
                       else None)
        for i, status in enumerate(statuses)
    ]  # fmt: skip


def test_install_outcomes_are_judged_once_enough_devices_reported() -> None:
    early = install_gate(_progress("rolled_back", "pending", "downloading"), POLICY)
    assert early.held is None
    assert "1 of at least 2" in early.detail
    broken = install_gate(_progress("rolled_back", "activated", "probation"), POLICY)
    assert broken.broken
    assert broken.measured == 50.0
    assert broken.limit == 10
    assert broken.devices == ("d0",)
    assert "gate install: 50 above the limit 10" in broken.sentence()
    assert "d0 rolled_back: probation_latency" in broken.sentence()
    for status in ("failed", "silent"):
        assert install_gate(_progress(status, "activated"), POLICY).broken
    held = install_gate(_progress(*["activated"] * 10, "failed"), POLICY)
    assert held.held is True
    assert held.measured == pytest.approx(100 / 11)
    # Devices someone else assigned another version count as neither.
    assert install_gate(_progress("superseded", "superseded"), POLICY).held is None


def test_a_wave_settles_once_enough_of_it_activated() -> None:
    assert not settled(_progress("activated", "probation"), 2, POLICY).held
    assert settled(_progress("activated", "activated"), 2, POLICY).held
    assert settled(_progress(*["activated"] * 9, "pending"), 10, POLICY).held  # 90%


def _point(version: int, device_id: str = "d1", *, requests: int = 50, errors: int = 0,
           p99: float = 2.0, classes: dict[str, int] | None = None) -> VersionPoint:  # fmt: skip
    detail = {"predictions": {"output": "label", "classes": classes}} if classes else {}
    return VersionPoint(
        model="m", version=version, device_id=device_id, at=T0 + timedelta(seconds=version),
        interval_s=1.0, requests=requests, ok=requests - errors, client_errors=0,
        server_errors=errors, rejected=0, latency_samples=requests, latency_p50_ms=p99 / 2,
        latency_p99_ms=p99, latency_max_ms=p99, detail=detail,
    )  # fmt: skip


def _verdicts(new: list[VersionPoint], old: list[VersionPoint]) -> dict[str, Verdict]:
    return {v.gate: v for v in judge(new, old, POLICY)}


def test_health_gates_hold_for_a_version_like_the_one_it_replaced() -> None:
    spread = {"0": 20, "1": 15, "2": 15}
    verdicts = _verdicts([_point(2, classes=spread)], [_point(1, classes=spread)])
    assert all(v.held for v in verdicts.values()), verdicts


def test_the_5xx_rate_gate_names_the_devices_past_it() -> None:
    new = [_point(2, "d1", errors=10), _point(2, "d2", errors=0)]
    verdict = _verdicts(new, [_point(1)])["error_rate"]
    assert verdict.broken
    assert verdict.measured == 0.1
    assert verdict.devices == ("d1",)
    assert "10 of 100 answers were 5xx" in verdict.detail


def test_the_latency_gate_compares_p99_with_the_replaced_version_above_a_floor() -> None:
    slow = _verdicts([_point(2, p99=40.0)], [_point(1, p99=8.0)])["latency"]
    assert slow.broken
    assert slow.measured == 5.0
    assert slow.limit == 2.0
    assert slow.devices == ("d1",)
    # 0.2 ms against 0.05 ms is 4 times slower, but both are far below the 5 ms floor.
    jitter = _verdicts([_point(2, p99=0.2)], [_point(1, p99=0.05)])["latency"]
    assert jitter.held
    assert jitter.measured == pytest.approx(0.04)


def test_the_prediction_shift_gate_measures_psi_of_the_classes() -> None:
    before = [_point(1, classes={"0": 20, "1": 15, "2": 15})]
    collapsed = _verdicts([_point(2, classes={"0": 50})], before)["prediction_shift"]
    assert collapsed.broken
    assert (collapsed.measured or 0) > 1
    assert collapsed.devices == ("d1",)
    without = _verdicts([_point(2)], before)["prediction_shift"]
    assert without.held is None
    assert "do not both report" in without.detail


def test_a_shift_no_larger_than_chance_gives_waits_for_more_answers() -> None:
    before = [_point(1, classes={"0": 20, "1": 15, "2": 15})]
    # A PSI of about 0.4, past the limit, on 50 predictions a side: chance reaches 0.56.
    few = _verdicts([_point(2, classes={"0": 34, "1": 8, "2": 8})], before)["prediction_shift"]
    assert few.held is None
    assert few.waits
    assert (few.measured or 0) > few.limit
    assert "chance alone reaches 0.56" in few.detail
    many = [_point(1, classes={"0": 200, "1": 150, "2": 150})]
    shifted = [_point(2, classes={"0": 340, "1": 80, "2": 80})]
    assert _verdicts(shifted, many)["prediction_shift"].broken  # the same shift, 10 times the data


def test_health_gates_are_not_judged_on_too_few_answers() -> None:
    verdicts = _verdicts([_point(2, requests=5, errors=5, p99=500.0)], [_point(1)])
    assert all(v.held is None for v in verdicts.values())
    assert "5 new" in verdicts["latency"].detail
    assert all(v.held is None for v in judge([], [], POLICY))
