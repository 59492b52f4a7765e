"""Agents following a real registry over a real mosquitto: updates, swaps, rollbacks, attacks.

Every attack is published straight on the broker with the registry's own MQTT credentials
(the broker is the adversary here); where an attack must carry a valid signature to reach the
rule it tests, the forger signs it with the registry's release key.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

from edge_protocol import AssignedModel, Envelope, Release, SigningKey, utc_now
from model_registry.trust.key_files import load_private_key
from tests.e2e.conftest import CHUNK, Models, collect_events, genuine_release, start_agent
from tests.support import external_data
from tests.support.agent import AgentProcess
from tests.support.fleet import TOPICS, Fleet, Forger, chunks_of, pinned
from tests.support.registry import cli


class Hammer:
    """A local application calling the agent in a loop, counting every failed request."""

    def __init__(self, agent: AgentProcess, model: str, rows: list[list[float]]) -> None:
        self.agent, self.model, self.rows = agent, model, rows
        self.ok = 0
        self.failures: list[object] = []
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            status, body = self.agent.infer(self.model, self.rows[:1])
            if status == 200:
                self.ok += 1
                self.versions.add(body["model_version"])
            else:
                self.failures.append((status, body))


def test_update_swaps_without_a_failed_request(
    fleet: Fleet, models: Models, releases: dict[str, int], agents: list[AgentProcess]
) -> None:
    agent = start_agent(fleet, agents, "happy", "happy")
    fleet.deploy("clf", releases["v1"], "happy")
    agent.wait_for_version("clf", releases["v1"])
    with Hammer(agent, "clf", models.rows) as hammer:
        time.sleep(0.5)
        fleet.deploy("clf", releases["v2"], "happy")
        agent.wait_for_version("clf", releases["v2"])
        time.sleep(0.5)
    assert hammer.failures == []
    assert hammer.ok > 10
    assert hammer.versions == {str(releases["v1"]), str(releases["v2"])}


def _phase(agent: AgentProcess, model: str) -> str | None:
    status = agent.get("/v1/status") or {}
    return (status.get("updates", {}).get(model) or {}).get("phase")


def test_a_first_version_failing_probation_keeps_serving_and_says_so(
    fleet: Fleet, models: Models, releases: dict[str, int], agents: list[AgentProcess]
) -> None:
    agent = start_agent(fleet, agents, "probation", "probation")
    fleet.deploy("broken", releases["broken"], "probation")
    with fleet.registry_client() as watcher:
        watcher.subscribe(TOPICS.events("probation"))
        agent.wait_for_version("broken", releases["broken"])
        deadline = time.monotonic() + 30
        huge = [[5000.0, *models.rows[0][1:]]]
        while _phase(agent, "broken") != "failed" and time.monotonic() < deadline:
            agent.infer("broken", huge)  # each one a 500: the model's fault
        events = collect_events(watcher, "probation", "failed")
    assert events[-1]["reason"] == "probation_failed"
    assert "no earlier version to roll back to" in events[-1]["detail"]
    # Nothing to fall back to: serving a model that fails some requests beats serving nothing.
    assert agent.serving_version("broken") == releases["broken"]
    assert agent.get("/v1/status")["updates"]["broken"]["last_error"] == events[-1]["detail"]


def test_registry_rollback_moves_the_group_back(
    fleet: Fleet, releases: dict[str, int], agents: list[AgentProcess]
) -> None:
    agent = start_agent(fleet, agents, "rb", "rb")
    for version in (releases["v1"], releases["v2"]):
        fleet.deploy("clf", version, "rb")
        agent.wait_for_version("clf", version)
    cli("rollback", "clf", "--group", "rb", *fleet.api())
    agent.wait_for_version("clf", releases["v1"])


Documents = list[tuple[str, bytes]]


def _update_documents(
    forger: Forger, device: str, seq: int, *, release: Release, signed: bytes, chunks: list[bytes]
) -> Documents:
    """Chunks, release and assignment of a complete update, in the order a registry sends them."""
    sha256 = release.artifact.sha256
    docs = [(TOPICS.artifact_chunk(sha256, i), chunk) for i, chunk in enumerate(chunks)]
    docs.append((TOPICS.release("clf", release.version), signed))
    docs.append(
        (TOPICS.assignment(device), forger.assignment(device, seq, {"clf": pinned(release)}))
    )
    return docs


def test_hostile_updates_are_rejected_and_the_old_model_keeps_serving(
    fleet: Fleet, models: Models, releases: dict[str, int], agents: list[AgentProcess]
) -> None:
    device = "target"
    agent = start_agent(fleet, agents, device, "target")
    fleet.deploy("clf", releases["v1"], "target")
    agent.wait_for_version("clf", releases["v1"])
    forger = fleet.forger()
    genuine = genuine_release(fleet, releases["v2"])
    v2_bytes = models.v2.read_bytes()

    def release(version: int, artifact: bytes) -> tuple[Release, bytes]:
        return forger.release_like(genuine, version=version, artifact=artifact, chunk_size=CHUNK)

    v50, v50_signed = release(50, v2_bytes)
    pins = {"clf": pinned(v50)}
    assignment_topic = TOPICS.assignment(device)
    expired = utc_now() - timedelta(minutes=1)
    unknown, root_key = SigningKey.generate(), load_private_key(_root_key_path(fleet))
    _other, other_signed = release(51, v2_bytes + b"x")
    reversed_bytes, junk = v2_bytes[::-1], bytes(range(256)) * 40
    big, big_signed = release(52, reversed_bytes)
    oversized_first = [chunks_of(reversed_bytes, CHUNK)[0] + bytes(100)]
    tampered = chunks_of(v2_bytes, CHUNK)
    tampered[1] = tampered[1][::-1]
    crash, crash_signed = release(53, junk)
    # v2's golden self-test attached to v3's file: a genuine model that does not reproduce it.
    v3_bytes = models.v3.read_bytes()
    wrong_test, wrong_test_signed = release(54, v3_bytes)
    # Signed with the real key: a model whose weights are the device's own MQTT password.
    password = fleet.root / "bundles" / device / "mqtt-password"
    leak_bytes = external_data.initializer(
        "../" * 64 + str(password).lstrip("/"), password.stat().st_size
    ).SerializeToString()
    leak, leak_signed = release(55, leak_bytes)
    seq = 10  # above anything the registry gave this device
    attacks: list[tuple[Documents, str, str]] = [
        ([(assignment_topic, forger.assignment(device, seq, pins, keys=(unknown,)))],
         "rejected", "signature_threshold"),
        ([(assignment_topic, forger.assignment(device, seq, pins, keys=(root_key,)))],
         "rejected", "signature_threshold"),
        ([(assignment_topic, forger.assignment(device, seq, pins, expires=expired))],
         "rejected", "expired"),
        ([(assignment_topic, forger.assignment("someone-else", seq, pins))],
         "rejected", "wrong_device"),
        ([(assignment_topic, forger.assignment(device, 1, pins))], "rejected", "replayed_seq"),
        ([(TOPICS.release("clf", 51), other_signed),
          (assignment_topic, forger.assignment(device, seq + 1, {"clf": AssignedModel(
              51, v50.artifact.sha256, v50.artifact.size)}))],
         "rejected", "release_mismatch"),
        (_update_documents(forger, device, seq + 2, release=v50, signed=v50_signed,
                           chunks=tampered), "rejected", "chunk_hash"),
        (_update_documents(forger, device, seq + 3, release=big, signed=big_signed,
                           chunks=oversized_first), "rejected", "size_exceeded"),
        (_update_documents(forger, device, seq + 4, release=crash, signed=crash_signed,
                           chunks=chunks_of(junk, CHUNK)), "failed", "load_error"),
        (_update_documents(forger, device, seq + 5, release=wrong_test, signed=wrong_test_signed,
                           chunks=chunks_of(v3_bytes, CHUNK)), "rejected", "selftest_mismatch"),
        (_update_documents(forger, device, seq + 6, release=leak, signed=leak_signed,
                           chunks=chunks_of(leak_bytes, CHUNK)), "rejected", "external_data"),
    ]  # fmt: skip
    with fleet.registry_client() as attacker:
        attacker.subscribe(TOPICS.events(device))
        for documents, kind, reason in attacks:
            for topic, payload in documents:
                attacker.publish(topic, payload, retain=True)
            events = collect_events(attacker, device, kind)
            assert events[-1]["reason"] == reason, events
            assert agent.serving_version("clf") == releases["v1"]

    v1 = Release.from_dict(Envelope.from_bytes(genuine_release(fleet, releases["v1"])).signed)
    installed = {p.name for p in (agent.state_dir / "models").iterdir()}
    assert installed == {f"{v1.artifact.sha256}.onnx"}, "nothing but v1 is installed"


def _root_key_path(fleet: Fleet) -> Path:
    return fleet.home / "keys" / "root" / "root-1.pem"


def test_root_rotation_is_followed_in_order(
    fleet: Fleet, releases: dict[str, int], agents: list[AgentProcess]
) -> None:
    from model_registry.trust.signing import make_root, sign_document

    agent = start_agent(fleet, agents, "rotate", "rotate")
    old_root = load_private_key(_root_key_path(fleet))
    release_key = fleet.forger().release_key
    new_roots = [SigningKey.generate(), SigningKey.generate()]
    expires = utc_now().replace(microsecond=0) + timedelta(days=30)
    v2 = make_root(2, [new_roots[0]], [release_key], root_threshold=1, expires=expires)
    v3 = make_root(3, [new_roots[1]], [release_key], root_threshold=1, expires=expires)
    intruder = SigningKey.generate()
    forged_v4 = make_root(4, [intruder], [intruder], root_threshold=1, expires=expires)
    with fleet.registry_client() as registry:
        registry.subscribe(TOPICS.events("rotate"))
        # v3 first: it must wait for v2, then follow the chain v1 -> v2 -> v3.
        registry.publish(TOPICS.root(3), sign_document(v3.to_dict(), [new_roots[0], new_roots[1]]),
                         retain=True)  # fmt: skip
        registry.publish(TOPICS.root(2), sign_document(v2.to_dict(), [old_root, new_roots[0]]),
                         retain=True)  # fmt: skip
        deadline = time.monotonic() + 30
        while (agent.get("/v1/status") or {}).get("trust", {}).get("root_version") != 3:
            assert time.monotonic() < deadline, "the agent did not follow the root chain"
            time.sleep(0.05)
        # A root signed only by a key the chain never trusted is refused.
        registry.publish(
            TOPICS.root(4), sign_document(forged_v4.to_dict(), [intruder]), retain=True
        )
        assert collect_events(registry, "rotate", "rejected")[-1]["reason"] == "signature_threshold"
        fleet.deploy("clf", releases["v1"], "rotate")
        agent.wait_for_version("clf", releases["v1"])
        for version in (2, 3, 4):  # leave the shared broker as it was
            registry.publish(TOPICS.root(version), b"", retain=True)
    assert (agent.state_dir / "trust" / "root.json").exists()


def test_http_artifact_transport(
    fleet: Fleet, releases: dict[str, int], agents: list[AgentProcess]
) -> None:
    agent = fleet.agent("http-device", "http")
    config = agent.config.read_text()
    assert f'http_url = "{fleet.registry.url}"' in config, "the bundle names the running API"
    agent.config.write_text(config.replace('transport = "mqtt"', 'transport = "http"'))
    agents.append(agent)
    agent.start()
    fleet.deploy("clf", releases["v2"], "http")
    agent.wait_for_version("clf", releases["v2"])
    assert agent.get("/v1/status")["downloads"]["chunks_written"] == 0, "nothing came over MQTT"
