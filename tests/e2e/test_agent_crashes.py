"""Reliability by force: SIGKILL at many points of an update, resumed downloads, broker outages.

After every kill the agent must serve a verified model at once and converge to its assignment;
a download interrupted half-way must fetch only what it lacks; a broker that goes away must not
stop the serving nor the update.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.conftest import CHUNK, Models, genuine_release, start_agent
from tests.support.agent import AgentProcess
from tests.support.fleet import TOPICS, Fleet, chunks_of, pinned

SHORT_PROBATION = "[updates]\nprobation_s = 1.0\nprobation_requests = 5\n"


def _phase(agent: AgentProcess, model: str) -> str | None:
    status = agent.get("/v1/status")
    if not status:
        return None
    return (status.get("updates", {}).get(model) or {}).get("phase")


def _wait_phase(agent: AgentProcess, model: str, phase: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _phase(agent, model) == phase:
            return
        time.sleep(0.01)
    raise AssertionError(f"{model} never reached {phase}; at {_phase(agent, model)}")


def _debris(state_dir: Path) -> list[Path]:
    """Temporary files a crash could leave behind (the resumable .part/.bitmap pair excepted)."""
    return [p for p in state_dir.rglob("*") if p.is_file() and p.name.endswith(".tmp")]


def test_sigkill_at_any_point_leaves_a_serving_agent_that_converges(
    fleet: Fleet, releases: dict[str, int], agents: list[AgentProcess]
) -> None:
    agent = start_agent(fleet, agents, "crashy", "crashy", SHORT_PROBATION)
    fleet.deploy("clf", releases["v1"], "crashy")
    agent.wait_for_version("clf", releases["v1"])
    served = {releases["v1"], releases["v2"]}
    # Kill points by phase where the agent shows them, then at fixed delays after a deploy
    # (those land in verification, download, loading, the swap itself and probation).
    plan: list[tuple[int, str | float]] = [
        (releases["v2"], "probation"),
        (releases["v1"], "probation"),
        *[(releases["v2"] if i % 2 == 0 else releases["v1"], delay)
          for i, delay in enumerate((0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.6))],
    ]  # fmt: skip
    for target, when in plan:
        fleet.deploy("clf", target, "crashy")
        if isinstance(when, str):
            _wait_phase(agent, "clf", when)
        else:
            time.sleep(when)
        agent.kill()
        left_by_the_kill = _debris(agent.state_dir)
        agent.start()
        # At once, before the broker is even reached: a verified model answers.
        assert agent.serving_version("clf") in served
        # (The running agent may be mid-write itself: only what the kill left must be gone.)
        still_there = [path for path in left_by_the_kill if path.exists()]
        assert not still_there, "a restart clears what a kill left mid-write"
        agent.wait_for_version("clf", target)
    _wait_phase(agent, "clf", "idle")
    assert not list((agent.state_dir / "downloads").glob("*.part"))


def test_interrupted_download_resumes_with_only_the_missing_chunks(
    fleet: Fleet, models: Models, releases: dict[str, int], agents: list[AgentProcess]
) -> None:
    device = "resume"
    agent = start_agent(fleet, agents, device, "resume")
    forger = fleet.forger()
    artifact = models.v3.read_bytes()
    release, signed = forger.release_like(
        genuine_release(fleet, releases["v3"]), version=70, artifact=artifact, chunk_size=CHUNK
    )
    chunks = chunks_of(artifact, CHUNK)
    half = len(chunks) // 2
    sha256 = release.artifact.sha256
    with fleet.registry_client() as registry:
        for index in range(half):
            registry.publish(TOPICS.artifact_chunk(sha256, index), chunks[index], retain=True)
        registry.publish(TOPICS.release("clf", 70), signed, retain=True)
        registry.publish(
            TOPICS.assignment(device), forger.assignment(device, 50, {"clf": pinned(release)}),
            retain=True,
        )  # fmt: skip
        _wait_for_chunks(agent, half)
        agent.kill()
        agent.start()
        for index in range(half, len(chunks)):
            registry.publish(TOPICS.artifact_chunk(sha256, index), chunks[index], retain=True)
        agent.wait_for_version("clf", 70)
        status = agent.get("/v1/status")
        assert status["downloads"]["chunks_written"] == len(chunks) - half
        for index in range(len(chunks)):  # leave the shared broker as it was
            registry.publish(TOPICS.artifact_chunk(sha256, index), b"", retain=True)


def _wait_for_chunks(agent: AgentProcess, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = agent.get("/v1/status") or {}
        if status.get("downloads", {}).get("chunks_written", 0) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"the agent did not write {count} chunks")


def test_broker_outage_during_serving_and_during_a_download(
    fleet: Fleet, models: Models, releases: dict[str, int], agents: list[AgentProcess]
) -> None:
    device = "outage"
    agent = start_agent(fleet, agents, device, "outage", SHORT_PROBATION)
    fleet.deploy("clf", releases["v1"], "outage")
    agent.wait_for_version("clf", releases["v1"])
    fleet.broker.stop()
    try:
        statuses = {agent.infer("clf", models.rows[:1])[0] for _ in range(20)}
    finally:
        fleet.broker.start()
    assert statuses == {200}, "serving does not depend on the broker"

    forger = fleet.forger()
    artifact = models.v3.read_bytes()
    release, signed = forger.release_like(
        genuine_release(fleet, releases["v3"]), version=80, artifact=artifact, chunk_size=CHUNK
    )
    chunks, sha256 = chunks_of(artifact, CHUNK), release.artifact.sha256
    half = len(chunks) // 2
    with fleet.registry_client() as registry:
        for index in range(half):
            registry.publish(TOPICS.artifact_chunk(sha256, index), chunks[index], retain=True)
        registry.publish(TOPICS.release("clf", 80), signed, retain=True)
        assignment = forger.assignment(device, 60, {"clf": pinned(release)})
        registry.publish(TOPICS.assignment(device), assignment, retain=True)
        _wait_for_chunks(agent, half)
    fleet.broker.stop()  # mid-download
    try:
        assert agent.infer("clf", models.rows[:1])[0] == 200
    finally:
        fleet.broker.start()
    with fleet.registry_client() as registry:
        for index in range(half, len(chunks)):
            registry.publish(TOPICS.artifact_chunk(sha256, index), chunks[index], retain=True)
        agent.wait_for_version("clf", 80, timeout=90)
        for index in range(len(chunks)):
            registry.publish(TOPICS.artifact_chunk(sha256, index), b"", retain=True)


def test_a_damaged_model_file_falls_back_to_the_previous_release(
    fleet: Fleet, releases: dict[str, int], agents: list[AgentProcess]
) -> None:
    agent = start_agent(fleet, agents, "damaged", "damaged", SHORT_PROBATION)
    for version in (releases["v1"], releases["v2"]):
        fleet.deploy("clf", version, "damaged")
        agent.wait_for_version("clf", version)
        _wait_phase(agent, "clf", "idle")
    agent.kill()
    active = agent.get_state()["models"]["clf"]["active"]["sha256"]
    model_file = agent.state_dir / "models" / f"{active}.onnx"
    model_file.write_bytes(model_file.read_bytes()[:-100])  # a bad sector, a half-flashed card
    agent.start()
    assert agent.serving_version("clf") == releases["v1"], "the previous release serves at once"
