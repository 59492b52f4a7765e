"""A download across a bad network link: cut twice, frozen half-open once, counted byte by byte.

The agent reaches the broker only through a TCP relay that the tests slow down, cut, and freeze
without closing (so that only the MQTT keep-alive can tell). The link is attacked at the moment
the agent subscribes to more chunks, where a lost acknowledgement hurts most. A lost link only
pauses the download: the same deploy must end activated, and a resume must fetch each missing
chunk about once.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess
from tests.support.broker import BrokerFactory
from tests.support.fleet import TOPICS, Fleet
from tests.support.models import build_classifier
from tests.support.mqtt_frames import PUBLISH, SUBSCRIBE, Packet
from tests.support.relay import Action, RelayThread, TcpRelay

CHUNK_KIB = 1  # small chunks: the model spans well over a hundred messages
RATE = 48 * 1024  # bytes per second from the broker to the agent: a download takes seconds
KEEPALIVE_S = 1  # a frozen link is noticed after about twice this
FRAMING = 128  # bytes of MQTT header and topic around each chunk
DOCUMENTS = 8 * 1024  # acks and the small documents a reconnect brings again (root, assignment)
LINK_TOML = """
[updates]
probation_s = 1.0
probation_requests = 5
"""


@dataclass(frozen=True)
class BigModel:
    path: Path
    version: int
    size: int
    chunks: int
    sha256: str


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("link-fleet")
    factory = BrokerFactory(root / "brokers")
    fleet = Fleet(root, factory)
    fleet.start(chunk_size_kib=CHUNK_KIB)
    yield fleet
    fleet.stop()
    factory.close()


@pytest.fixture(scope="module")
def big(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> BigModel:
    """A classifier of 512 features (about 150 chunks of 1 KiB), pushed once."""
    path = tmp_path_factory.mktemp("link-models") / "big.onnx"
    build_classifier(path, n_features=512, n_samples=400)
    release = fleet.push(path, "big")
    chunks = -(-release["size"] // (CHUNK_KIB * 1024))
    return BigModel(path, release["version"], release["size"], chunks, release["sha256"])


def _through(agent: AgentProcess, relay_url: str) -> None:
    """Point the agent's config at the relay, with a short keep-alive and quick reconnects."""
    text = agent.config.read_text()
    text = re.sub(r'(?m)^url = "mqtt://[^"]*"$', f'url = "{relay_url}"', text)
    text = text.replace(
        "keepalive_s = 30",
        f"keepalive_s = {KEEPALIVE_S}\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5",
    )
    agent.config.write_text(text)


def _is_chunk(packet: Packet, sha256: str) -> bool:
    prefix = TOPICS.artifact_chunk(sha256, 0).rsplit("/", 1)[0] + "/"
    return any(topic.startswith(prefix) for topic in packet.topics)


def _arm(relay: RelayThread, sha256: str, after: int, action: Action) -> asyncio.Event:
    """Cut or freeze the link at the agent's first chunk SUBSCRIBE once `after` chunks went by."""

    def arm(r: TcpRelay) -> asyncio.Event:
        def check(packet: Packet) -> bool:
            if packet.kind != SUBSCRIBE or not _is_chunk(packet, sha256):
                return False
            return (
                sum(1 for p in r.to_client if p.kind == PUBLISH and _is_chunk(p, sha256)) >= after
            )

        return r.when_client_sends(check, action)

    return relay.call(arm)


def _count_chunks(relay: TcpRelay, sha256: str) -> int:
    return sum(1 for p in relay.to_client if p.kind == PUBLISH and _is_chunk(p, sha256))


def _chunks_delivered(relay: RelayThread, sha256: str) -> int:
    return relay.call(lambda r: _count_chunks(r, sha256))


def _wait_until(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _api(fleet: Fleet, path: str) -> Any:
    token = (fleet.home / "secrets" / "cli-token").read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - the test registry's http URL
        f"{fleet.registry.url}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def _deploy(fleet: Fleet, big: BigModel, group: str) -> int:
    fleet.deploy("big", big.version, group)
    ours = [d for d in _api(fleet, "/v1/deployments?model=big")["deployments"]
            if d["target"] == {"group": group}]  # fmt: skip
    assert len(ours) == 1
    return int(ours[0]["id"])


def _statuses(fleet: Fleet, deployment: int) -> list[str]:
    progress = _api(fleet, f"/v1/deployments/{deployment}")["progress"]
    return [device["status"] for device in progress["devices"]]


def _events(fleet: Fleet, device: str) -> list[dict[str, Any]]:
    return [e["body"] for e in _api(fleet, f"/v1/devices/{device}")["events"]]


def test_two_cuts_and_a_half_open_link_only_pause_the_download(
    fleet: Fleet, big: BigModel, agents: list[AgentProcess]
) -> None:
    device = "flaky-link"
    with RelayThread(fleet.broker, to_client_bytes_per_s=RATE) as relay:
        agent = fleet.agent(device, device, LINK_TOML)
        _through(agent, relay.call(lambda r: r.url))
        agents.append(agent)
        agent.start()
        _wait_until(lambda: relay.call(lambda r: r.connections) == 1, "the agent to connect")
        cut_1 = _arm(relay, big.sha256, 20, "cut")
        deployment = _deploy(fleet, big, device)

        relay.wait(lambda _r: cut_1, timeout=60)
        _wait_until(lambda: relay.call(lambda r: r.connections) == 2, "a reconnect after cut 1")
        _wait_until(lambda: _chunks_delivered(relay, big.sha256) >= 60, "60 chunks")
        relay.call(lambda r: r.cut())  # a plain cut in the middle of the stream
        _wait_until(lambda: relay.call(lambda r: r.connections) == 3, "a reconnect after cut 2")
        frozen = _arm(relay, big.sha256, 100, "stall")
        relay.wait(lambda _r: frozen, timeout=60)
        # Only the keep-alive can notice now: the agent must give the link up and come back.
        _wait_until(lambda: relay.call(lambda r: r.connections) == 4, "a reconnect after the stall")
        relay.call(lambda r: r.release_stalled())

        agent.wait_for_version("big", big.version, timeout=120)
        _wait_until(lambda: _statuses(fleet, deployment) == ["activated"], "activated upstream")
        assert len(_api(fleet, "/v1/deployments?model=big")["deployments"]) == 1, "no newer deploy"
        failures = [e for e in _events(fleet, device) if e["event"] in ("failed", "rejected")]
        assert failures == [], "a lost link is no failure"
        assert agent.get("/v1/status")["downloads"]["chunks_written"] == big.chunks


def test_a_resumed_download_moves_each_missing_chunk_about_once(
    fleet: Fleet, big: BigModel, agents: list[AgentProcess]
) -> None:
    device = "metered-link"
    with RelayThread(fleet.broker, to_client_bytes_per_s=RATE) as relay:
        agent = fleet.agent(device, device, LINK_TOML)
        _through(agent, relay.call(lambda r: r.url))
        agents.append(agent)
        agent.start()
        _wait_until(lambda: relay.call(lambda r: r.connections) == 1, "the agent to connect")
        gone = _arm(relay, big.sha256, 40, "cut")
        _deploy(fleet, big, device)
        relay.wait(lambda _r: gone, timeout=60)
        relay.call(lambda r: setattr(r, "up", False))
        # A refused attempt means the agent handled everything the dead link had brought.
        _wait_until(lambda: relay.call(lambda r: r.refused) >= 1, "a refused reconnect")
        had = agent.get("/v1/status")["downloads"]["chunks_received"]
        relay.call(lambda r: (r.to_client.clear(), setattr(r, "up", True)))

        agent.wait_for_version("big", big.version, timeout=120)
        after = relay.call(lambda r: list(r.to_client))
    chunk_messages = [p for p in after if p.kind == PUBLISH and _is_chunk(p, big.sha256)]
    chunk_bytes = sum(p.payload_size for p in chunk_messages)
    missing = big.chunks - had
    missing_bytes = missing * CHUNK_KIB * 1024  # at most this: the last chunk is shorter
    sent = Counter(p.topics[0] for p in chunk_messages)
    twice = sorted(topic.rsplit("/", 1)[1] for topic, n in sent.items() if n > 1)
    assert chunk_bytes <= 1.2 * missing_bytes, (
        f"{len(chunk_messages)} chunk messages ({chunk_bytes} bytes) for {missing} missing "
        f"chunks; sent more than once: {twice}"
    )
    total = sum(p.size for p in after)
    allowance = 1.2 * missing_bytes + missing * FRAMING + DOCUMENTS
    assert total <= allowance, (
        f"{total} bytes crossed for {missing_bytes} missing: "
        f"{Counter((p.kind, '' if _is_chunk(p, big.sha256) else p.topics) for p in after)}"
    )
