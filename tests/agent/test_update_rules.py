"""The rules of the update state machine up to the swap, table by table, on the simulator.

A real agent (tests/support/update_sim.py) serves version 1 of a model, committed under
assignment 1; each case sends it something (a document wrong in one way, a release that fails a
step, a link that goes away) and checks the rule of docs/agent.md and docs/protocol.md section 5:
the event and reason code, which version serves, and what state.json records. The clock moves
only when a case says so, so every deadline is exact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config.settings import UpdateSettings
from edge_protocol import SelfTest, SigningKey
from tests.protocol.factory import NOW, sign
from tests.support import external_data
from tests.support.sim_repository import Shipped, SimRepository
from tests.support.update_sim import Sim, run_sim

M = "m"
V1_SEQ = 3  # the seq v1 is installed under before an assignment is refused
SETTINGS = UpdateSettings(
    release_timeout_s=60,
    download_timeout_s=120,
    activation_timeout_s=300,
    probation_requests=5,
    probation_s=600,
    probation_min_requests=5,
    probation_max_latency_ratio=0,  # latency is not what these cases are about
    write_retry_min_s=1,
    write_retry_max_s=4,
)


async def serving_v1(sim: Sim, models: dict[str, Path]) -> Shipped:
    v1 = sim.repo.release(M, 1, models["good"])
    await sim.install(v1)
    return v1


# --- assignments the device refuses -------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    forge: Callable[[SimRepository, Shipped], bytes]  # the assignment bytes, given release v2
    reason: str
    names_the_model: bool = False  # an event per followed model (only for `expired`)


def _other_key(repo: SimRepository, v2: Shipped) -> bytes:
    return repo.keys.assignment_bytes(repo.keys.assignment(2, v2.release), SigningKey.generate())


def _release_as_assignment(repo: SimRepository, v2: Shipped) -> bytes:
    return v2.signed  # a genuine document of the release role, of the wrong type


def _oversized(repo: SimRepository, v2: Shipped) -> bytes:
    return b"{" + b" " * (1024 * 1024) + b"}"


REFUSALS = {
    "signed-by-a-key-the-root-does-not-name": Refusal(_other_key, "signature_threshold"),
    "for-another-device": Refusal(
        lambda r, v2: r.assignment(v2, device_id="dev-999"), "wrong_device"
    ),
    "expired": Refusal(
        lambda r, v2: r.assignment(
            v2, created=NOW - timedelta(days=2), expires=NOW - timedelta(seconds=1)
        ),
        "expired",
        names_the_model=True,
    ),
    "an-older-seq": Refusal(lambda r, v2: r.assignment(v2, seq=V1_SEQ - 1), "replayed_seq"),
    "the-same-seq-with-other-content": Refusal(
        lambda r, v2: r.assignment(v2, seq=V1_SEQ), "replayed_seq"
    ),
    "not-json": Refusal(lambda r, v2: b"{not json", "malformed"),
    "a-release-on-the-assignment-topic": Refusal(_release_as_assignment, "wrong_type"),
    "over-a-mebibyte": Refusal(_oversized, "oversized_document"),
    "a-schema-it-breaks": Refusal(
        lambda r, v2: sign({"_type": "assignment", "seq": V1_SEQ + 1}, *r.keys.release_keys),
        "malformed",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refused_assignment_changes_nothing(
    tmp_path: Path, sim_models: dict[str, Path], case: str
) -> None:
    refusal = REFUSALS[case]

    async def scenario(sim: Sim) -> None:
        sim.repo.seq = V1_SEQ - 1  # so that an older seq is a valid one
        await serving_v1(sim, sim_models)
        v2 = sim.repo.release(M, 2, sim_models["good"])
        sim.repo.send_assignment(refusal.forge(sim.repo, v2))
        rejected = await sim.event("rejected")
        assert rejected["reason"] == refusal.reason
        if refusal.names_the_model:  # the registry signed it: it counts against the deploy
            assert (rejected["model"], rejected["version"]) == (M, 2)
            assert rejected["seq"] == V1_SEQ + 1
        else:  # perhaps a forgery: its claims are not repeated upstream
            assert "model" not in rejected
            assert "version" not in rejected
        await sim.settled()
        assert sim.committed(M, 1)
        assert sim.on_disk_seq() == V1_SEQ
        assert not sim.events("received", 2)

    run_sim(tmp_path, SETTINGS, scenario)


def test_the_same_assignment_delivered_again_is_a_no_op(
    tmp_path: Path, sim_models: dict[str, Path]
) -> None:
    async def scenario(sim: Sim) -> None:
        v1 = await serving_v1(sim, sim_models)
        signed = sim.repo.assignment(v1, seq=1)
        for _ in range(3):  # retained messages come again on every reconnect
            await sim.drop_link()
            await sim.restore_link()
        sim.repo.send_assignment(signed)
        await sim.settled()
        assert not sim.events("rejected")
        assert [e["seq"] for e in sim.events("received")] == [1]
        assert sim.committed(M, 1)

    run_sim(tmp_path, SETTINGS, scenario)


# --- releases that fail a step: the device keeps serving v1 and records the failure -----------


@dataclass(frozen=True)
class StepFailure:
    ship: Callable[[Sim, dict[str, Path]], Shipped]  # publishes version 2, wrong in one way
    event: str
    reason: str


def _mismatched_release(sim: Sim, models: dict[str, Path]) -> Shipped:
    pinned = sim.repo.release(M, 2, models["good"])
    sim.repo.release(M, 2, models["collapse"])  # a genuine v2 of other bytes takes its topic
    return pinned


def _release_signed_by_another_key(sim: Sim, models: dict[str, Path]) -> Shipped:
    shipped = sim.repo.release(M, 2, models["good"])
    forged = sign(shipped.release.to_dict(), SigningKey.generate())
    sim.broker.publish(sim.repo.topics.release(M, 2), forged)
    return shipped


def _chunk_1(replacement: bytes) -> Callable[[Sim, dict[str, Path]], Shipped]:
    """A release whose chunk 1 (of 64 bytes, not the last) is `replacement` on the broker."""

    def ship(sim: Sim, models: dict[str, Path]) -> Shipped:
        shipped = sim.repo.release(M, 2, models["good"], chunk_size=64)
        topic = sim.repo.topics.artifact_chunk(shipped.release.artifact.sha256, 1)
        sim.broker.publish(topic, replacement)
        return shipped

    return ship


def _whole_file_hash_differs(sim: Sim, models: dict[str, Path]) -> Shipped:
    # Every chunk verifies, but the artifact's sha256 (what the assignment pins) is not theirs.
    real = sim.repo.release(M, 2, models["good"], chunk_size=64).release.artifact
    artifact = replace(real, sha256=hashlib.sha256(real.sha256.encode()).hexdigest())
    return sim.repo.release(M, 2, models["good"], chunk_size=64, artifact=artifact)


def _wrong_golden_output(sim: Sim, models: dict[str, Path]) -> Shipped:
    good = sim.repo.release(M, 2, models["good"]).release.selftest
    labels = np.frombuffer(good.outputs[0].data, dtype="<i8")
    wrong = replace(good.outputs[0], data=((labels + 1) % 3).astype("<i8").tobytes())
    return sim.repo.release(M, 2, models["good"], selftest=SelfTest(good.inputs, (wrong,)))


def _not_a_model(sim: Sim, models: dict[str, Path]) -> Shipped:
    return sim.repo.release(M, 2, models["good"], data=b"these bytes are no ONNX model")


def _fails_its_warm_up(sim: Sim, models: dict[str, Path]) -> Shipped:
    # It answers its self-test's seven rows, but not the warm-up's one row of zeros.
    rows = -np.linspace(0.1, 1, 7 * 4, dtype=np.float32).reshape(7, 4)
    return sim.repo.release(M, 2, models["failing"], golden_rows=rows)


def _external_data(sim: Sim, models: dict[str, Path]) -> Shipped:
    data = external_data.initializer("/etc/hostname", 4).SerializeToString()
    return sim.repo.release(M, 2, models["good"], data=data)


def _expired_release(sim: Sim, models: dict[str, Path]) -> Shipped:
    expired = {"created": NOW - timedelta(days=2), "expires": NOW - timedelta(seconds=1)}
    return sim.repo.release(M, 2, models["good"], **expired)


STEP_FAILURES = {
    "a-release-of-other-bytes-than-pinned": StepFailure(
        _mismatched_release, "rejected", "release_mismatch"
    ),
    "a-release-signed-by-another-key": StepFailure(
        _release_signed_by_another_key, "rejected", "signature_threshold"
    ),
    "an-expired-release": StepFailure(_expired_release, "rejected", "expired"),
    "a-corrupt-chunk": StepFailure(_chunk_1(bytes(64)), "rejected", "chunk_hash"),
    "a-chunk-too-long": StepFailure(_chunk_1(bytes(65)), "rejected", "size_exceeded"),
    "a-chunk-too-short": StepFailure(_chunk_1(bytes(10)), "rejected", "chunk_size"),
    "chunks-that-do-not-make-the-artifact": StepFailure(
        _whole_file_hash_differs, "rejected", "artifact_hash"
    ),
    "a-model-that-misses-its-self-test": StepFailure(
        _wrong_golden_output, "rejected", "selftest_mismatch"
    ),
    "bytes-that-do-not-load": StepFailure(_not_a_model, "failed", "load_error"),
    "a-model-that-fails-its-warm-up": StepFailure(_fails_its_warm_up, "failed", "load_error"),
    "a-model-that-refers-to-external-data": StepFailure(
        _external_data, "rejected", "external_data"
    ),
}


@pytest.mark.parametrize("case", sorted(STEP_FAILURES))
def test_a_release_that_fails_a_step_leaves_v1_serving(
    tmp_path: Path, sim_models: dict[str, Path], case: str
) -> None:
    failure = STEP_FAILURES[case]

    async def scenario(sim: Sim) -> None:
        await serving_v1(sim, sim_models)
        v2 = failure.ship(sim, sim_models)
        sim.repo.assign(v2)
        ended = await sim.event(failure.event, 2)
        assert (ended["reason"], ended["seq"]) == (failure.reason, 2)
        await sim.until(lambda: sim.failed_here(M) == {2: 2}, "the failure recorded")
        assert sim.serving(M) == 1
        assert sim.phase(M) == "failed"
        assert (sim.on_disk(M)["active"]["version"], sim.on_disk(M)["in_probation"]) == (1, False)
        assert not sim.events("activated", 2)

    run_sim(tmp_path, SETTINGS, scenario)


# --- a release that failed here is not tried again until a newer assignment names it -----------

AGAIN = {
    "the-link-comes-back-without-the-session": "reconnect",
    "the-agent-is-restarted": "clean",
    "the-agent-is-killed-and-started-again": "crash",
}


@pytest.mark.parametrize("case", sorted(AGAIN))
def test_a_failed_release_waits_for_a_newer_assignment(
    tmp_path: Path, sim_models: dict[str, Path], case: str
) -> None:
    async def scenario(sim: Sim) -> None:
        await serving_v1(sim, sim_models)
        v2 = _wrong_golden_output(sim, sim_models)
        sim.repo.assign(v2)
        await sim.event("rejected", 2)
        await sim.until(lambda: sim.failed_here(M) == {2: 2}, "v2 failed at seq 2")
        if AGAIN[case] == "reconnect":
            await sim.drop_link()
            await sim.restore_link()
        else:
            await sim.restart(clean=AGAIN[case] == "clean")
            await sim.until(lambda: sim.live.link.up and sim.broker.idle(), "connected")
        assert sim.serving(M) == 1
        sim.repo.assign(v2)  # seq 3 names the same release: it is tried once more
        await sim.until(lambda: sim.failed_here(M) == {2: 3}, "v2 failed at seq 3")
        # Events go out in order: a retry under seq 2 would have come before seq 3's.
        assert [e["seq"] for e in sim.events("received", 2)] == [2, 3]
        assert sim.serving(M) == 1

    run_sim(tmp_path, SETTINGS, scenario)


# --- a newer assignment while an update runs ---------------------------------------------------


def test_a_newer_assignment_replaces_an_update_under_way(
    tmp_path: Path, sim_models: dict[str, Path]
) -> None:
    async def scenario(sim: Sim) -> None:
        await serving_v1(sim, sim_models)
        v2 = sim.repo.release(M, 2, sim_models["good"])
        sim.broker.publish(sim.repo.topics.release(M, 2), b"")
        sim.repo.assign(v2)
        await sim.until(lambda: sim.phase(M) == "verifying", "v2 waiting for its release")
        v3 = sim.repo.release(M, 3, sim_models["good"], label="v3")
        await sim.install(v3)
        await sim.advance(SETTINGS.release_timeout_s * 2)  # v2's deadline would be long past
        await sim.settled()
        assert not sim.events("failed")
        assert sim.failed_here(M) == {}

    run_sim(tmp_path, SETTINGS, scenario)


def test_a_newer_assignment_of_the_release_under_way_may_retry_it(
    tmp_path: Path, sim_models: dict[str, Path]
) -> None:
    async def scenario(sim: Sim) -> None:
        await serving_v1(sim, sim_models)
        v2 = _wrong_golden_output(sim, sim_models)
        sim.broker.publish(sim.repo.topics.release(M, 2), b"")  # held back for now
        sim.repo.assign(v2)
        await sim.until(lambda: sim.phase(M) == "verifying", "v2 waiting for its release")
        sim.repo.assign(v2)  # seq 3 names the release the update of seq 2 is installing
        await sim.settled()
        assert [e["seq"] for e in sim.events("received", 2)] == [2]
        sim.broker.publish(sim.repo.topics.release(M, 2), v2.signed)
        # It fails under seq 2; seq 3 asked for it too, so it is tried once more, and only once.
        await sim.until(lambda: sim.failed_here(M) == {2: 3}, "v2 failed under seq 3")
        assert [e["seq"] for e in sim.events("received", 2)] == [2, 3]
        assert sim.serving(M) == 1

    run_sim(tmp_path, SETTINGS, scenario)
