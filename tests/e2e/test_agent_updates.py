"""Agents following a real registry over a real mosquitto: updates, swaps, rollbacks, attacks.

Every attack is published straight on the broker with the registry's own MQTT credentials
(the broker is the adversary here); where an attack must carry a valid signature to reach the
rule it tests, the forger signs it with the registry's release key.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from edge_protocol import AssignedModel, Envelope, Release, SigningKey, load_private_key, utc_now
from tests.support.agent import AgentProcess
from tests.support.broker import BrokerFactory, MqttTestClient
from tests.support.fleet import TOPICS, Fleet, Forger, chunks_of, pinned
from tests.support.models import build_classifier
from tests.support.registry import cli

CHUNK = 4 * 1024  # small chunks: every artifact spans many messages


@dataclass
class Models:
    """Two versions of one classifier, and a model that passes its self-test but fails requests."""

    v1: Path
    v2: Path
    broken: Path
    rows: list[list[float]]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("models")
    first = build_classifier(root / "v1.onnx", n_samples=600)
    build_classifier(root / "v2.onnx", n_samples=450)
    return Models(root / "v1.onnx", root / "v2.onnx", _failing_model(root / "broken.onnx"),
                  first.X_eval[:4].tolist())  # fmt: skip


def _failing_model(path: Path) -> Path:
    """Fine on ordinary inputs (warm-up, self-test), a runtime failure when X[0][0] > 1000.

    It reshapes X to [-1, d] with d = 1, or 64 when the first feature is huge: 32 elements per
    row cannot be reshaped to rows of 64, so onnxruntime fails inside the graph (a 500).
    """
    make = helper.make_node
    const = helper.make_tensor
    nodes = [
        make("Gather", ["X", "zero"], ["first"], axis=1),
        make("ReduceMax", ["first"], ["largest"], keepdims=0),
        make("Greater", ["largest", "limit"], ["huge"]),
        make("Cast", ["huge"], ["huge_int"], to=TensorProto.INT64),
        make("Mul", ["huge_int", "sixty_three"], ["extra"]),
        make("Add", ["extra", "one"], ["width"]),
        make("Unsqueeze", ["width", "axes"], ["width_1d"]),
        make("Concat", ["minus_one", "width_1d"], ["shape"], axis=0),
        make("Reshape", ["X", "shape"], ["probabilities"]),
    ]
    constants = [
        const("zero", TensorProto.INT64, [], [0]),
        const("limit", TensorProto.FLOAT, [], [1000.0]),
        const("sixty_three", TensorProto.INT64, [], [63]),
        const("one", TensorProto.INT64, [], [1]),
        const("axes", TensorProto.INT64, [1], [0]),
        const("minus_one", TensorProto.INT64, [1], [-1]),
    ]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 32])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["M", "D"])
    graph = helper.make_graph(nodes, "broken", [x], [y], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    factory = BrokerFactory(root / "brokers")
    fleet = Fleet(root, factory)
    fleet.start(chunk_size_kib=CHUNK // 1024)
    yield fleet
    fleet.stop()
    factory.close()


@pytest.fixture(scope="module")
def releases(fleet: Fleet, models: Models) -> dict[str, int]:
    """Versions 1 and 2 of `clf` and version 1 of `broken`, pushed once for the module."""
    return {
        "v1": fleet.push(models.v1, "clf")["version"],
        "v2": fleet.push(models.v2, "clf")["version"],
        "broken": fleet.push(models.broken, "broken")["version"],
    }


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


def _start(fleet: Fleet, agents: list[AgentProcess], device: str, group: str) -> AgentProcess:
    agent = fleet.agent(device, group)
    agents.append(agent)
    agent.start()
    return agent


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


def _events(client: MqttTestClient, device: str, until: str, timeout: float = 60) -> list[dict]:
    """Collect the device's events until one of kind `until` arrives."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = client.next_message(timeout=deadline - time.monotonic())
        if message.topic == TOPICS.events(device):
            event = json.loads(message.payload)
            seen.append(event)
            if event["event"] == until:
                return seen
    raise AssertionError(f"no {until} event from {device}; saw {seen}")


def test_update_swaps_without_a_failed_request(
    fleet: Fleet, models: Models, releases: dict[str, int], agents: list[AgentProcess]
) -> None:
    agent = _start(fleet, agents, "happy", "happy")
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


def test_probation_failure_rolls_back_to_the_previous_model(
    fleet: Fleet, models: Models, releases: dict[str, int], agents: list[AgentProcess]
) -> None:
    agent = _start(fleet, agents, "probation", "probation")
    fleet.deploy("broken", releases["broken"], "probation")
    with fleet.registry_client() as watcher:
        watcher.subscribe(TOPICS.events("probation"))
        agent.wait_for_version("broken", releases["broken"])
        deadline = time.monotonic() + 30
        huge = [[5000.0, *models.rows[0][1:]]]
        while agent.serving_version("broken") is not None and time.monotonic() < deadline:
            agent.infer("broken", huge)  # each one a 500: the model's fault
        events = _events(watcher, "probation", "rolled_back")
    assert events[-1]["reason"] == "probation_failed"
    assert agent.serving_version("broken") is None, "nothing to fall back to: not served"


def test_registry_rollback_moves_the_group_back(
    fleet: Fleet, releases: dict[str, int], agents: list[AgentProcess]
) -> None:
    agent = _start(fleet, agents, "rb", "rb")
    for version in (releases["v1"], releases["v2"]):
        fleet.deploy("clf", version, "rb")
        agent.wait_for_version("clf", version)
    cli("rollback", "clf", "--group", "rb", *fleet.api())
    agent.wait_for_version("clf", releases["v1"])


def _genuine_release(fleet: Fleet, version: int) -> bytes:
    """The signed release the registry stored for `clf` `version`."""
    token = (fleet.home / "secrets" / "cli-token").read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - the test registry's http URL
        f"{fleet.registry.url}/v1/models/clf/versions/{version}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return Envelope.from_dict(json.loads(response.read())["signed_release"]).to_bytes()


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
    agent = _start(fleet, agents, device, "target")
    fleet.deploy("clf", releases["v1"], "target")
    agent.wait_for_version("clf", releases["v1"])
    forger = fleet.forger()
    genuine = _genuine_release(fleet, releases["v2"])
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
    ]  # fmt: skip
    with fleet.registry_client() as attacker:
        attacker.subscribe(TOPICS.events(device))
        for documents, kind, reason in attacks:
            for topic, payload in documents:
                attacker.publish(topic, payload, retain=True)
            events = _events(attacker, device, kind)
            assert events[-1]["reason"] == reason, events
            assert agent.serving_version("clf") == releases["v1"]

    v1 = Release.from_dict(Envelope.from_bytes(_genuine_release(fleet, releases["v1"])).signed)
    installed = {p.name for p in (agent.state_dir / "models").iterdir()}
    assert installed == {f"{v1.artifact.sha256}.onnx"}, "nothing but v1 is installed"


def _root_key_path(fleet: Fleet) -> Path:
    return fleet.home / "keys" / "root" / "root-1.pem"
