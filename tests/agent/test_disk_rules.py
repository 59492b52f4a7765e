"""A disk that refuses a write at each step of an update, on the simulator.

docs/agent.md, "When the disk refuses a write", gives the rule of each step.
The state directory is a small tmpfs (tests/support/disk.py) that a case fills at one step:
writes fail there with ENOSPC, nothing is simulated. The spool is on the same disk, so the
events reach the broker from memory. Each case checks the step's row of the table: what is
reported, which version serves meanwhile, and what lands once the space is back and the retry
(a simulated `write_retry_min_s` later) writes it, without a restart.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from edge_agent.config.settings import UpdateSettings
from edge_agent.runtime import LoadedModel
from tests.support.disk import SmallDisk
from tests.support.update_sim import Sim, run_sim

M = "m"
DISK_BYTES = 8 * 1024 * 1024
SETTINGS = UpdateSettings(
    release_timeout_s=60, download_timeout_s=120, activation_timeout_s=300,
    probation_requests=5, probation_s=600, probation_min_requests=5,
    probation_max_latency_ratio=0,  # latency is not what these cases are about
    write_retry_min_s=1, write_retry_max_s=4,
)  # fmt: skip


def disk(sim: Sim) -> SmallDisk:
    assert sim.disk is not None
    return sim.disk


async def fill(sim: Sim) -> None:
    """Fill the disk once every event is sent: the spool deletes no file later to free space."""
    spool = sim.live.reporter.spool
    await sim.until(lambda: spool.stats()["pending"] == 0, "every event sent")
    disk(sim).fill()


async def space_back(sim: Sim) -> None:
    """Free the disk and let the write retries run."""
    disk(sim).free()
    await sim.advance(SETTINGS.write_retry_max_s)


async def the_assignment_waits(sim: Sim, models: dict[str, Path]) -> None:
    await fill(sim)
    v2 = sim.repo.release(M, 2, models["good"])
    sim.repo.assign(v2)
    failed = await sim.event("failed", 2)
    assert (failed["reason"], failed["seq"]) == ("disk_full", 2)
    await sim.until(lambda: sim.phase(M) == "failed", "phase failed")
    assert sim.serving(M) == 1
    assert sim.on_disk_seq() == 1, "not recorded, so not acted on"
    await space_back(sim)
    await sim.until(lambda: sim.in_probation(M, 2), "applied once its seq is on disk")
    await sim.infer(M, SETTINGS.probation_requests)
    await sim.until(lambda: sim.committed(M, 2), "v2 committed")
    assert sim.on_disk_seq() == 2


async def the_free_space_check_refuses(sim: Sim, models: dict[str, Path]) -> None:
    v2 = sim.repo.release(M, 2, models["slow"])  # about 1 MB: it needs 2 MB free
    await fill(sim)
    filler = disk(sim).filler
    os.truncate(filler, filler.stat().st_size - 1024 * 1024)  # 1 MB free
    sim.repo.assign(v2)
    failed = await sim.event("failed", 2)
    assert (failed["reason"], failed["seq"]) == ("disk_full", 2)
    await sim.until(lambda: sim.failed_here(M) == {2: 2}, "recorded as failed")
    assert sim.serving(M) == 1
    assert not list((sim.state_dir / "downloads").glob("*.part"))


async def the_probation_start_refuses(sim: Sim, models: dict[str, Path]) -> None:
    def fill_at_swap(name: str, old: LoadedModel | None, new: LoadedModel | None) -> None:
        if new is not None and new.version == 2:
            disk(sim).fill()

    sim.live.repository.add_listener(fill_at_swap)
    sim.repo.assign(sim.repo.release(M, 2, models["good"]))
    rolled_back = await sim.event("rolled_back", 2)
    assert (rolled_back["reason"], rolled_back["to_version"]) == ("disk_full", 1)
    await sim.until(lambda: sim.phase(M) == "idle" and sim.serving(M) == 1, "v1 serving")
    await space_back(sim)
    await sim.until(lambda: sim.failed_here(M) == {2: 2}, "the rollback on disk")
    assert sim.committed(M, 1)


async def the_commit_refuses(sim: Sim, models: dict[str, Path]) -> None:
    sim.repo.assign(sim.repo.release(M, 2, models["good"]))
    await sim.until(lambda: sim.in_probation(M, 2), "v2 on probation")
    await fill(sim)
    await sim.infer(M, SETTINGS.probation_requests)
    failed = await sim.event("failed", 2)
    assert failed["reason"] == "disk_full"
    assert "passed probation" in failed["detail"]
    await sim.until(lambda: sim.phase(M) == "failed", "phase failed")
    assert sim.serving(M) == 2, "it passed: it keeps serving"
    assert sim.on_disk(M)["in_probation"] is True, "a restart now would probate it again"
    await space_back(sim)
    await sim.until(lambda: sim.committed(M, 2), "the commit landed")
    assert sim.on_disk(M)["previous"]["version"] == 1


async def the_rollback_refuses(sim: Sim, models: dict[str, Path]) -> None:
    def fill_at_swap_back(name: str, old: LoadedModel | None, new: LoadedModel | None) -> None:
        if new is not None and new.version == 1:  # filled last: the spool frees no more space
            disk(sim).fill()

    sim.repo.assign(sim.repo.release(M, 2, models["erratic"]))
    await sim.until(lambda: sim.in_probation(M, 2), "v2 on probation")
    sim.live.repository.add_listener(fill_at_swap_back)
    await sim.infer(M, SETTINGS.probation_requests)
    rolled_back = await sim.event("rolled_back", 2)
    assert (rolled_back["reason"], rolled_back["to_version"]) == ("probation_failed", 1)
    await sim.until(lambda: sim.phase(M) == "idle" and sim.serving(M) == 1, "v1 serving")
    assert sim.on_disk(M)["active"]["version"] == 2, "the rollback is not on disk yet"
    await space_back(sim)
    await sim.until(lambda: sim.committed(M, 1), "the rollback on disk")
    assert sim.failed_here(M) == {2: 2}


async def the_trust_root_refuses(sim: Sim, models: dict[str, Path]) -> None:
    keys = sim.repo.keys
    keys.root_version = 2
    await fill(sim)
    sim.broker.publish(sim.repo.topics.root(2), keys.root_bytes())
    failed = await sim.event("failed")
    assert failed["reason"] == "disk_full"
    assert "model" not in failed
    assert sim.live.trust.root.version == 2, "trusted in memory"
    stored = sim.state_dir / "trust" / "root.json"
    assert not stored.exists()
    await space_back(sim)
    await sim.until(stored.exists, "the root saved")
    assert stored.read_bytes() == keys.root_bytes()


STEPS: dict[str, Callable[[Sim, dict[str, Path]], Awaitable[None]]] = {
    "assignment": the_assignment_waits,
    "free-space-check": the_free_space_check_refuses,
    "probation-start": the_probation_start_refuses,
    "commit": the_commit_refuses,
    "rollback": the_rollback_refuses,
    "trust-root": the_trust_root_refuses,
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_refused_write_at_each_step(
    tmp_path: Path, sim_models: dict[str, Path], step: str
) -> None:
    async def scenario(sim: Sim) -> None:
        await sim.install(sim.repo.release(M, 1, sim_models["good"]))
        await STEPS[step](sim, sim_models)

    run_sim(tmp_path, SETTINGS, scenario, disk_bytes=DISK_BYTES)
