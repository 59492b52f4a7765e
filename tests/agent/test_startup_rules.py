"""What the agent does with what it finds at start, and what it keeps, on the simulator.

docs/agent.md, "Start-up": every committed model serves from the store before the network is
touched; a damaged file falls back to the previous release, or to nothing. Retention keeps the
active and the previous release only. A device follows only the models it is told to, and an
expired root makes it stale: it keeps serving and takes no update.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from edge_agent.config.settings import UpdateSettings
from tests.support.sim_repository import Shipped
from tests.support.update_sim import Sim, run_sim

M = "m"
SETTINGS = UpdateSettings(
    probation_requests=5, probation_s=600, probation_min_requests=5,
    probation_max_latency_ratio=0,  # latency is not what these cases are about
)  # fmt: skip


def stored(sim: Sim, shipped: Shipped) -> Path:
    return sim.state_dir / "models" / f"{shipped.release.artifact.sha256}.onnx"


def damage(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1] + b"?")


@dataclass(frozen=True)
class Damage:
    damaged: tuple[int, ...]  # versions whose stored file no longer verifies at the restart
    serves: int | None  # what serves after it


DAMAGES = {
    "intact-files-serve-as-committed": Damage((), 2),
    "a-damaged-active-file-falls-back-to-the-previous": Damage((2,), 1),
    "with-both-damaged-nothing-serves": Damage((1, 2), None),
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_a_restart_serves_what_verifies(
    tmp_path: Path, sim_models: dict[str, Path], case: str
) -> None:
    rule = DAMAGES[case]

    async def scenario(sim: Sim) -> None:
        shipped = {1: sim.repo.release(M, 1, sim_models["good"])}
        await sim.install(shipped[1])
        shipped[2] = sim.repo.release(M, 2, sim_models["good"])
        await sim.install(shipped[2])
        await sim.stop()
        for version in rule.damaged:
            damage(stored(sim, shipped[version]))
        sim.broker.drop()  # it serves before it touches the network
        await sim.start()
        assert sim.serving(M) == rule.serves
        on_disk = sim.on_disk(M)
        assert (on_disk.get("active") or {}).get("version") == rule.serves
        await sim.restore_link()
        assert sim.serving(M) == rule.serves, "the same assignment again changes nothing"

    run_sim(tmp_path, SETTINGS, scenario)


def test_retention_keeps_the_active_and_the_previous_release(
    tmp_path: Path, sim_models: dict[str, Path]
) -> None:
    async def scenario(sim: Sim) -> None:
        shipped = [sim.repo.release(M, v, sim_models["good"]) for v in (1, 2, 3)]
        for one in shipped:
            await sim.install(one)
        kept = {stored(sim, one).name for one in shipped[1:]}
        signed = {f"{M}-{one.release.artifact.sha256}.json" for one in shipped[1:]}

        def files(directory: str, pattern: str) -> set[str]:
            return {p.name for p in (sim.state_dir / directory).glob(pattern)}

        # Retention runs once the commit is written: wait for it, then nothing else is left.
        await sim.until(lambda: files("models", "*.onnx") == kept, "v1's model file removed")
        await sim.until(lambda: files("releases", "*.json") == signed, "v1's release removed")
        assert not files("downloads", "*")

    run_sim(tmp_path, SETTINGS, scenario)


def test_a_device_installs_only_the_models_it_follows(
    tmp_path: Path, sim_models: dict[str, Path]
) -> None:
    async def scenario(sim: Sim) -> None:
        ignored = sim.repo.release("other", 1, sim_models["good"])
        followed = sim.repo.release(M, 1, sim_models["good"])
        sim.repo.assign(ignored, followed)
        await sim.until(lambda: sim.in_probation(M, 1), "the followed model on probation")
        await sim.infer(M, SETTINGS.probation_requests)
        await sim.until(lambda: sim.committed(M, 1), "committed")
        assert "other" not in sim.live.repository
        assert not [e for e in sim.events() if e.get("model") == "other"]
        assert "other" not in sim.on_disk_models()

    run_sim(tmp_path, SETTINGS, scenario, follow=(M,))


def test_an_expired_root_keeps_the_device_serving_but_takes_no_update(
    tmp_path: Path, sim_models: dict[str, Path]
) -> None:
    async def scenario(sim: Sim) -> None:
        await sim.install(sim.repo.release(M, 1, sim_models["good"]))
        assert sim.reported()["trust"]["stale"] is False
        await sim.advance(timedelta(days=366).total_seconds())  # the root lasts 365 days
        await sim.restart(clean=True)
        await sim.until(lambda: sim.reported().get("trust", {}).get("stale") is True, "stale")
        assert sim.serving(M) == 1
        sim.repo.assign(sim.repo.release(M, 2, sim_models["good"]))
        rejected = await sim.event("rejected")
        assert rejected["reason"] == "expired"
        assert sim.committed(M, 1)

    run_sim(tmp_path, SETTINGS, scenario)


def test_a_probation_whose_model_no_longer_verifies_falls_back_at_start(
    tmp_path: Path, sim_models: dict[str, Path]
) -> None:
    async def scenario(sim: Sim) -> None:
        await sim.install(sim.repo.release(M, 1, sim_models["good"]))
        v2 = sim.repo.release(M, 2, sim_models["good"])
        sim.repo.assign(v2)
        await sim.until(lambda: sim.in_probation(M, 2), "v2 on probation")
        await sim.crash()
        damage(stored(sim, v2))
        await sim.start()
        assert sim.serving(M) == 1
        on_disk = sim.on_disk(M)
        assert (on_disk["active"]["version"], on_disk["in_probation"]) == (1, False)

    run_sim(tmp_path, SETTINGS, scenario)
