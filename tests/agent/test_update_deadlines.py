"""The deadlines of an update, exact on the simulator's clock.

`release_timeout_s` and `download_timeout_s` wait on the broker and count connected time only
(docs/agent.md, "Lost links"); `activation_timeout_s` bounds loading, warm-up and self-test.
Each case moves the clock to just before the deadline (nothing happens), then past it.
"""

from __future__ import annotations

from pathlib import Path

from edge_agent.config.settings import UpdateSettings
from tests.support.sim_broker import Published
from tests.support.update_sim import Sim, run_sim

M = "m"
SETTINGS = UpdateSettings(
    release_timeout_s=60, download_timeout_s=120, activation_timeout_s=300,
    probation_requests=5, probation_s=600, probation_min_requests=5,
    probation_max_latency_ratio=0,  # latency is not what these cases are about
    write_retry_min_s=1, write_retry_max_s=4,
)  # fmt: skip


async def serving_v1(sim: Sim, models: dict[str, Path]) -> None:
    await sim.install(sim.repo.release(M, 1, models["good"]))


def test_a_release_that_never_arrives_times_out_in_connected_time(
    tmp_path: Path, sim_models: dict[str, Path]
) -> None:
    async def scenario(sim: Sim) -> None:
        await serving_v1(sim, sim_models)
        v2 = sim.repo.release(M, 2, sim_models["good"])
        sim.broker.publish(sim.repo.topics.release(M, 2), b"")  # the release is not retained
        sim.repo.assign(v2)
        await sim.until(lambda: sim.phase(M) == "verifying", "waiting for the release")
        await sim.advance(SETTINGS.release_timeout_s - 1)
        await sim.drop_link()  # a day offline does not count
        await sim.advance(86_400)
        await sim.restore_link()
        assert sim.phase(M) == "verifying"
        assert not sim.events("failed", 2)
        await sim.advance(2)
        failed = await sim.event("failed", 2)
        assert (failed["reason"], failed["seq"]) == ("timeout", 2)
        assert sim.serving(M) == 1
        await sim.until(lambda: sim.failed_here(M) == {2: 2}, "the failure recorded")

    run_sim(tmp_path, SETTINGS, scenario)


def test_a_download_times_out_only_without_progress(
    tmp_path: Path, sim_models: dict[str, Path]
) -> None:
    async def scenario(sim: Sim) -> None:
        await serving_v1(sim, sim_models)
        v2 = sim.repo.release(M, 2, sim_models["good"], chunk_size=64)
        sim.repo.withdraw_chunks(v2)
        sim.repo.assign(v2)
        await sim.until(lambda: sim.phase(M) == "downloading", "downloading")
        fetcher = sim.live.mqtt_fetcher
        for index in (0, 1):  # a chunk in each stretch: each resets the deadline
            await sim.advance(SETTINGS.download_timeout_s - 1)
            written = fetcher.chunks_written
            sim.repo.publish_chunks(v2, [index])
            await sim.until(lambda n=written: fetcher.chunks_written > n, f"chunk {index}")
            assert sim.phase(M) == "downloading"
        await sim.advance(SETTINGS.download_timeout_s - 1)
        await sim.settled()
        assert sim.phase(M) == "downloading"
        await sim.advance(2)
        failed = await sim.event("failed", 2)
        assert (failed["reason"], failed["seq"]) == ("timeout", 2)
        assert sim.serving(M) == 1

    run_sim(tmp_path, SETTINGS, scenario)


def test_loading_that_takes_too_long_times_out(tmp_path: Path, sim_models: dict[str, Path]) -> None:
    async def scenario(sim: Sim) -> None:
        await serving_v1(sim, sim_models)
        state_topic = sim.repo.topics.state("dev-001")

        def hold_the_load(message: Published) -> None:
            # Published the moment the phase changes, before the load starts: it is held.
            if (
                message.topic == state_topic
                and message.json()["models"].get(M, {}).get("phase") == "loading"
            ):
                sim.threads.hold()

        sim.broker.listeners.append(hold_the_load)
        sim.repo.assign(sim.repo.release(M, 2, sim_models["good"]))
        await sim.until(lambda: sim.threads.held > 0, "the load held in its thread")
        sim.broker.listeners.remove(hold_the_load)
        await sim.advance(SETTINGS.activation_timeout_s + 1)
        sim.threads.let_go()
        failed = await sim.event("failed", 2)
        assert (failed["reason"], failed["seq"]) == ("timeout", 2)
        await sim.until(lambda: sim.failed_here(M) == {2: 2}, "the failure recorded")
        assert sim.serving(M) == 1
        assert not sim.events("activated", 2)

    run_sim(tmp_path, SETTINGS, scenario)
