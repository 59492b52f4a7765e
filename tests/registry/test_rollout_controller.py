"""The rollout controller in process: real storage, signer and API; devices report by storing
what the ingest would store (their state, their events, their telemetry's version points), and
the registry's clock moves only when a test moves it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest

from edge_protocol import AssignedModel
from model_registry.errors import ConflictError
from model_registry.rollouts import service
from model_registry.rollouts.controller import run_rollouts
from model_registry.rollouts.policy import parse_policy
from model_registry.services.context import RegistryContext
from model_registry.storage import RolloutRecord, Storage, open_storage
from model_registry.storage.base import VersionPoint
from tests.registry.conftest import Api
from tests.support.storage_records import SHA, T0, device, release

GROUP = tuple(f"d{i}" for i in range(8))
MODEL = "mnist"


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def ctx(api: Api) -> Iterator[RegistryContext]:
    """The API's context on a fleet of 8 devices running version 1; its clock starts at T0."""
    context = api.ctx
    context.clock = Clock(T0 + timedelta(days=1))
    for version in (1, 2):
        await context.storage.add_release(release(MODEL, version))
    entry = AssignedModel(1, SHA, 1234).to_dict()
    for device_id in GROUP:
        await context.storage.add_device(device(device_id, "lab"))
        await context.storage.set_assignment(device_id, 1, b"v1", {MODEL: entry})
        await _runs(context, device_id, 1)
    return context


async def _runs(ctx: RegistryContext, device_id: str, version: int) -> None:
    state = {"models": {MODEL: {"active": {"version": version}, "phase": "idle"}}}
    await ctx.storage.record_state(device_id, state, True, ctx.clock())


async def _event(ctx: RegistryContext, device_id: str, event: str, reason: str) -> None:
    body = {"event": event, "model": MODEL, "version": 2, "reason": reason}
    await ctx.storage.add_event(device_id, ctx.clock(), body)


def _assigned(ctx: RegistryContext) -> Any:
    async def read() -> dict[str, int]:
        return {d.device_id: d.assigned[MODEL]["version"] for d in await ctx.storage.devices()}

    return read()


async def _start(ctx: RegistryContext, **policy: Any) -> RolloutRecord:
    # Without telemetry, by default: the health gates' own test reports some.
    settings = {"steps": [25, 50, 100], "soak": 10, "min_requests": 10, "require_traffic": False}
    settings.update(policy)
    return await service.start_rollout(
        ctx, MODEL, 2, "lab", parse_policy(settings), created_by="admin"
    )


async def _activate_wave(ctx: RegistryContext, rollout_id: int) -> tuple[str, ...]:
    rollout = await ctx.storage.get_rollout(rollout_id)
    wave = rollout.waves[-1].devices
    for device_id in wave:
        await _runs(ctx, device_id, 2)
    return wave


async def _actions(storage: Storage, rollout_id: int) -> list[str]:
    return [d.action for d in await storage.rollout_decisions(rollout_id)]


async def test_a_good_release_reaches_every_device_wave_by_wave(ctx: RegistryContext) -> None:
    rollout = await _start(ctx)
    first = rollout.waves[0].devices
    assert len(first) == 2
    assigned = await _assigned(ctx)
    assert {d for d, v in assigned.items() if v == 2} == set(first)  # the others wait
    reached = set(first)
    for expected in (2, 4):  # devices the 50% and 100% waves move
        await _activate_wave(ctx, rollout.rollout_id)
        await run_rollouts(ctx)  # settled: the soak begins
        await run_rollouts(ctx)
        assert len((await ctx.storage.get_rollout(rollout.rollout_id)).waves) < 3 or expected == 4
        ctx.clock.advance(11)  # type: ignore[attr-defined]
        await run_rollouts(ctx)  # passed, and the next wave starts at once
        rollout = await ctx.storage.get_rollout(rollout.rollout_id)
        wave = rollout.waves[-1]
        assert len(wave.devices) == expected
        assert not reached & set(wave.devices)
        reached |= set(wave.devices)
    await _activate_wave(ctx, rollout.rollout_id)
    await run_rollouts(ctx)
    ctx.clock.advance(11)  # type: ignore[attr-defined]
    await run_rollouts(ctx)
    done = await ctx.storage.get_rollout(rollout.rollout_id)
    assert done.state == "completed"
    assert reached == set(GROUP)
    assert set((await _assigned(ctx)).values()) == {2}
    assert await _actions(ctx.storage, done.rollout_id) == [
        "started", *["wave_started", "wave_settled", "wave_passed"] * 3, "completed"
    ]  # fmt: skip
    assert len(await ctx.storage.deployments(MODEL)) == 3  # one per wave, none twice


async def test_a_failed_install_halts_and_gives_the_previous_version_back(
    ctx: RegistryContext,
) -> None:
    rollout = await _start(ctx)
    bad, good = rollout.waves[0].devices
    seq_before = (await ctx.storage.get_device(bad)).assignment_seq
    await _runs(ctx, good, 2)
    await _event(ctx, bad, "rolled_back", "probation_latency")
    await run_rollouts(ctx)
    halted = await ctx.storage.get_rollout(rollout.rollout_id)
    assert halted.state == "halted"
    assert halted.halt is not None
    assert (halted.halt["gate"], halted.halt["measured"], halted.halt["limit"]) == (
        "install", 50.0, 10.0
    )  # fmt: skip
    assert halted.halt["devices"] == [bad]
    assert "probation_latency" in halted.halt["reason"]
    assert set((await _assigned(ctx)).values()) == {1}  # both moved devices got v1 back
    assert (await ctx.storage.get_device(bad)).assignment_seq == seq_before + 1  # newly signed
    deployments = await ctx.storage.deployments(MODEL)
    assert [(d.kind, set(d.device_ids)) for d in deployments] == [
        ("rollback", {bad, good}), ("deploy", {bad, good})
    ]  # fmt: skip
    assert await _actions(ctx.storage, rollout.rollout_id) == [
        "started", "wave_started", "halted", "rolled_back"
    ]  # fmt: skip
    await run_rollouts(ctx)  # a halted rollout never moves again
    assert len(await ctx.storage.deployments(MODEL)) == 2


async def test_a_slower_version_halts_on_its_telemetry(ctx: RegistryContext) -> None:
    rollout = await _start(ctx, max_latency_ratio=2.0, latency_floor_ms=1.0)
    wave = rollout.waves[0]
    for device_id in wave.devices:
        await _report(ctx, device_id, 1, p99=3.0, at=wave.started - timedelta(seconds=30))
    await _activate_wave(ctx, rollout.rollout_id)
    await run_rollouts(ctx)  # settled
    for device_id in wave.devices:
        await _report(ctx, device_id, 2, p99=30.0, at=ctx.clock())
    await run_rollouts(ctx)
    halted = await ctx.storage.get_rollout(rollout.rollout_id)
    assert halted.state == "halted"
    assert halted.halt is not None
    assert (halted.halt["gate"], halted.halt["measured"]) == ("latency", 10.0)
    assert sorted(halted.halt["devices"]) == sorted(wave.devices)
    assert set((await _assigned(ctx)).values()) == {1}


async def test_a_soak_lasts_until_the_health_gates_had_enough_answers(
    ctx: RegistryContext,
) -> None:
    rollout = await _start(ctx, require_traffic=True)
    wave = rollout.waves[0]
    await _activate_wave(ctx, rollout.rollout_id)
    await run_rollouts(ctx)
    ctx.clock.advance(60)  # type: ignore[attr-defined]
    await run_rollouts(ctx)
    assert (await ctx.storage.get_rollout(rollout.rollout_id)).waves[0].passed is None
    for device_id in wave.devices:
        await _report(ctx, device_id, 1, p99=3.0, at=wave.started - timedelta(seconds=30))
        await _report(ctx, device_id, 2, p99=3.0, at=ctx.clock())
    await run_rollouts(ctx)
    passed = await ctx.storage.get_rollout(rollout.rollout_id)
    assert passed.waves[0].passed is not None
    assert len(passed.waves) == 2
    (decision,) = [
        d for d in await ctx.storage.rollout_decisions(rollout.rollout_id)
        if d.action == "wave_passed"
    ]  # fmt: skip
    gates = {g["gate"]: g for g in decision.numbers["gates"]}
    assert gates["latency"]["held"] is True
    assert gates["latency"]["measured"] == 0.6  # 3 ms against the 5 ms floor
    assert gates["prediction_shift"]["held"] is None  # neither version reports predictions


async def test_a_version_predicting_one_class_halts_on_its_prediction_shift(
    ctx: RegistryContext,
) -> None:
    rollout = await _start(ctx, max_psi=0.25)
    wave = rollout.waves[0]
    spread = {"0": 120, "1": 90, "2": 90}  # enough that chance alone cannot explain a shift
    for device_id in wave.devices:
        await _report(ctx, device_id, 1, p99=3.0, at=wave.started - timedelta(seconds=30),
                      classes=spread)  # fmt: skip
    await _activate_wave(ctx, rollout.rollout_id)
    await run_rollouts(ctx)
    collapsed, fine = wave.devices
    await _report(ctx, collapsed, 2, p99=3.0, at=ctx.clock(), classes={"0": 300})
    await _report(ctx, fine, 2, p99=3.0, at=ctx.clock(), classes=spread)
    await run_rollouts(ctx)
    halted = await ctx.storage.get_rollout(rollout.rollout_id)
    assert halted.state == "halted"
    assert halted.halt is not None
    assert halted.halt["gate"] == "prediction_shift"
    assert halted.halt["measured"] > halted.halt["limit"] == 0.25
    assert halted.halt["devices"] == [collapsed]  # the device whose own PSI is past the limit
    assert set((await _assigned(ctx)).values()) == {1}


async def _report(ctx: RegistryContext, device_id: str, version: int, *, p99: float,
                  at: datetime, classes: dict[str, int] | None = None) -> None:  # fmt: skip
    """A telemetry report of one version, stored as the ingest stores its points."""
    from model_registry.storage import DeviceReport

    point = VersionPoint(
        model=MODEL, version=version, device_id=device_id, at=at, interval_s=1.0, requests=30,
        ok=30, client_errors=0, server_errors=0, rejected=0, latency_samples=30,
        latency_p50_ms=p99 / 2, latency_p99_ms=p99, latency_max_ms=p99,
        detail={"predictions": {"output": "label", "classes": classes}} if classes else {},
    )  # fmt: skip
    report = DeviceReport(device_id, "telemetry", at, {"models": {}}, points=(point,))
    await ctx.storage.add_device_reports([report])


async def test_manual_pause_resume_and_abort(ctx: RegistryContext) -> None:
    rollout = await _start(ctx, manual=True, steps=[25, 100])
    await _activate_wave(ctx, rollout.rollout_id)
    await run_rollouts(ctx)
    ctx.clock.advance(11)  # type: ignore[attr-defined]
    await run_rollouts(ctx)
    waiting = await ctx.storage.get_rollout(rollout.rollout_id)
    assert waiting.state == "waiting"
    assert len(waiting.waves) == 1
    paused = await service.pause(ctx, rollout.rollout_id, "ops")
    assert paused.state == "paused"
    await run_rollouts(ctx)
    assert len((await ctx.storage.get_rollout(rollout.rollout_id)).waves) == 1
    resumed = await service.resume(ctx, rollout.rollout_id, "ops")
    assert resumed.state == "running"
    assert len(resumed.waves) == 2
    aborted = await service.abort(ctx, rollout.rollout_id, "ops")
    assert aborted.state == "aborted"
    assert aborted.halt is not None
    assert aborted.halt["reason"] == "aborted by ops"
    assert set((await _assigned(ctx)).values()) == {1}
    with pytest.raises(ConflictError, match="is aborted"):
        await service.resume(ctx, rollout.rollout_id, "ops")
    actions = await _actions(ctx.storage, rollout.rollout_id)
    assert actions[-5:] == ["paused", "resumed", "wave_started", "aborted", "rolled_back"]
    actors = {d.actor for d in await ctx.storage.rollout_decisions(rollout.rollout_id)}
    assert actors == {"admin", "controller", "ops"}


async def test_a_silent_device_fails_at_the_deadline(ctx: RegistryContext) -> None:
    rollout = await _start(ctx, deadline=30, max_failure_percent=40)
    quiet, answering = rollout.waves[0].devices
    await _runs(ctx, answering, 2)
    await run_rollouts(ctx)
    assert (await ctx.storage.get_rollout(rollout.rollout_id)).state == "running"
    ctx.clock.advance(31)  # type: ignore[attr-defined]
    await run_rollouts(ctx)
    halted = await ctx.storage.get_rollout(rollout.rollout_id)
    assert halted.state == "halted"
    assert halted.halt is not None
    assert halted.halt["devices"] == [quiet]
    assert "silent" in halted.halt["reason"]


async def test_a_registry_restarted_mid_rollout_resumes_where_it_was(
    ctx: RegistryContext, api: Api
) -> None:
    rollout = await _start(ctx)
    await _activate_wave(ctx, rollout.rollout_id)
    await run_rollouts(ctx)
    # Another registry process on the same database, as after a restart.
    storage = open_storage(ctx.config.database_location)
    await storage.open()
    try:
        again = RegistryContext(ctx.config, storage, ctx.blobs, ctx.signer, clock=ctx.clock)
        ctx.clock.advance(11)  # type: ignore[attr-defined]
        await run_rollouts(again)
        await run_rollouts(again)
        await run_rollouts(ctx)  # the old one too: neither starts wave 2 twice
        rollout = await storage.get_rollout(rollout.rollout_id)
        assert [len(w.devices) for w in rollout.waves] == [2, 2]
        assert len(await storage.deployments(MODEL)) == 2
        assert (await _actions(storage, rollout.rollout_id)).count("wave_started") == 2
    finally:
        await storage.close()


async def test_another_rollout_of_the_model_to_the_group_waits_for_the_first(
    ctx: RegistryContext,
) -> None:
    first = await _start(ctx)
    with pytest.raises(ConflictError, match=f"rollout {first.rollout_id}"):
        await _start(ctx)
    status = await service.rollout_status(ctx, first.rollout_id)
    assert [w.wave is not None for w in status.waves] == [True, False, False]
    assert sum(len(w.devices) for w in status.waves) == len(GROUP)
