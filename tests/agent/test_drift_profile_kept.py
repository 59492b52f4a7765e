"""The release's drift profile on the device, on the simulator: it serves with the model, it
is read again from the kept release at a restart, and a malformed one is refused."""

from __future__ import annotations

from pathlib import Path

from edge_agent.config.settings import UpdateSettings
from edge_protocol import Bins, InputProfile, Profile
from tests.support.sim_repository import FEATURES
from tests.support.update_sim import Sim, run_sim

M = "m"
SETTINGS = UpdateSettings(
    probation_requests=5, probation_s=600, probation_min_requests=5,
    probation_max_latency_ratio=0,
)  # fmt: skip
COLUMN = Bins((-1.0, 0.0, 1.0), (10, 10, 10, 10))
PROFILE = Profile(rows=40, inputs={"X": InputProfile((COLUMN,) * FEATURES)})


def _profile(sim: Sim) -> Profile | None:
    return sim.live.repository.get(M).profile


def test_the_profile_serves_with_its_model_and_again_after_a_restart(
    tmp_path: Path, sim_models: dict[str, Path]
) -> None:
    async def scenario(sim: Sim) -> None:
        await sim.install(sim.repo.release(M, 1, sim_models["good"], profile=PROFILE))
        assert _profile(sim) == PROFILE
        await sim.stop()
        sim.broker.drop()  # served from the store and the kept release, before the network
        await sim.start()
        assert sim.serving(M) == 1
        assert _profile(sim) == PROFILE
        await sim.restore_link()
        await sim.install(sim.repo.release(M, 2, sim_models["good"]))
        assert _profile(sim) is None, "a release without a profile counts no bins"

    run_sim(tmp_path, SETTINGS, scenario)


def test_a_malformed_profile_is_rejected_and_changes_nothing(
    tmp_path: Path, sim_models: dict[str, Path]
) -> None:
    async def scenario(sim: Sim) -> None:
        await sim.install(sim.repo.release(M, 1, sim_models["good"], profile=PROFILE))
        narrow = Profile(rows=40, inputs={"X": InputProfile((COLUMN,) * (FEATURES - 1))})
        sim.repo.assign(sim.repo.release(M, 2, sim_models["good"], profile=narrow))
        rejected = await sim.event("rejected", 2)
        assert rejected["reason"] == "malformed"
        assert "release.profile.inputs.X.columns" in rejected["detail"]
        assert sim.serving(M) == 1
        assert _profile(sim) == PROFILE

    run_sim(tmp_path, SETTINGS, scenario)
