"""Spooled messages stay until the registry acknowledges them, and are resent until it does.

The first tests drive the spool's bookkeeping directly on real files. The others run a
Reporter against a real mosquitto: the test plays the registry, reading what the device sends
and publishing `acks` (built with `edge_protocol.topics.ack_payload`) when it chooses to.
"""

from __future__ import annotations

import asyncio
import errno
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.settings import MqttSettings
from edge_agent.mqtt import AgentMqtt
from edge_agent.uplink.reporting import ACK_WINDOW, FALLBACK_SENDS, Reporter
from edge_agent.uplink.spool import KIND_EVENTS, KIND_TELEMETRY, Spool
from edge_protocol.messages import ack_payload
from tests.agent.conftest import eventually
from tests.agent.mqtt_helpers import DEADLINE_S, TOPICS, next_message, unique
from tests.support.broker import Broker


def message(seq: int) -> bytes:
    """A small payload naming its msg_seq."""
    return json.dumps({"msg_seq": seq}).encode()


def files(directory: Path) -> list[int]:
    """The msg_seq of every message file in the spool directory."""
    return sorted(int(p.name.split(".")[0]) for p in directory.glob("*.*") if p.name[0].isdigit())


# --- the spool's bookkeeping --------------------------------------------------------------


def test_sent_messages_stay_on_disk_until_the_registry_names_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    seqs = [spool.append(KIND_TELEMETRY, message) for _ in range(5)]
    spool.sent([r.seq for r in spool.take(10)], resend_at=1e12)
    assert (spool.pending(), spool.unacknowledged(), files(tmp_path)) == (0, 5, seqs)
    assert not spool.registry_acks

    assert spool.acknowledge(spool.epoch, [(seqs[0], seqs[1]), (seqs[3], seqs[3])]) == 3
    assert files(tmp_path) == [seqs[2], seqs[4]]
    assert spool.stats()["awaiting_ack"] == 2
    assert spool.registry_acks
    assert Spool(tmp_path, max_bytes=1 << 20).registry_acks, "remembered across restarts"


def test_an_ack_of_another_epoch_deletes_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    seq = spool.append(KIND_EVENTS, message)
    assert spool.acknowledge("0" * 16, [(0, 2**63 - 1)]) == 0
    assert files(tmp_path) == [seq]
    assert not spool.registry_acks


def test_what_is_not_acknowledged_by_its_deadline_is_queued_again_in_order(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    first = [spool.append(KIND_EVENTS, message) for _ in range(3)]
    spool.sent([r.seq for r in spool.take(10)], resend_at=10.0)
    later = spool.append(KIND_TELEMETRY, message)
    assert spool.expire(9.0) == 0
    assert [r.seq for r in spool.take(10)] == [later]
    spool.sent([later], resend_at=20.0)
    assert spool.next_deadline() == 10.0

    assert spool.expire(10.0) == 3
    assert [r.seq for r in spool.take(10)] == first, "resent oldest first"
    assert spool.next_deadline() == 20.0
    spool.postpone(30.0)  # a new connection: the last one's acks may be on their way
    assert spool.expire(25.0) == 0


def test_a_message_acknowledged_while_in_flight_is_not_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    one, two = (spool.append(KIND_EVENTS, message) for _ in range(2))
    spool.take(2)
    assert spool.acknowledge(spool.epoch, [(one, one)]) == 1
    spool.sent([one, two], resend_at=1e12)  # the PUBACKs come after the registry's ack
    assert (spool.unacknowledged(), files(tmp_path)) == (1, [two])


def test_the_cap_drops_sent_messages_in_the_documented_order(tmp_path: Path) -> None:
    record = 12 + len(message(1))
    spool = Spool(tmp_path, max_bytes=3 * record)
    event, telemetry, other = (
        spool.append(k, message) for k in [KIND_EVENTS, KIND_TELEMETRY, KIND_EVENTS]
    )
    spool.sent([r.seq for r in spool.take(3)], resend_at=1e12)
    newest = spool.append(KIND_EVENTS, message)
    assert files(tmp_path) == [event, other, newest], "the oldest telemetry goes first"
    assert spool.stats()["dropped_telemetry"] == 1
    assert telemetry not in (event, other)


# --- the reporter against a real broker ---------------------------------------------------


@dataclass
class Uplink:
    """A reporter on a live connection, and the test in the registry's seat."""

    device: str
    reporter: Reporter
    registry: AgentMqtt

    @property
    def spool(self) -> Spool:
        return self.reporter.spool

    async def next(self) -> dict[str, Any]:
        """The next event or telemetry message the device sends."""
        body: dict[str, Any] = json.loads((await next_message(self.registry)).payload)
        return body

    async def heard_from_the_registry(self) -> None:
        """An ack of this spool's epoch that deletes nothing: the registry acknowledges."""
        await self.ack(0)  # msg_seq 0 is never allocated
        await until(lambda: self.spool.registry_acks)

    async def ack(self, *seqs: int) -> None:
        """Acknowledge these messages, as the registry does after storing them."""
        ranges = [(seq, seq) for seq in sorted(seqs)]
        await self.registry.publish(
            TOPICS.acks(self.device), ack_payload(self.device, self.spool.epoch, ranges)
        )


async def until(predicate: Callable[[], bool]) -> None:
    """Wait until `predicate` holds, at most DEADLINE_S (a liveness bound)."""
    await eventually(predicate, "the spool to get there", timeout_s=DEADLINE_S)


@pytest.fixture
def ack_timeout_s() -> float:
    return 0.2


@pytest.fixture
def registry_acks() -> bool:
    return True


@pytest.fixture
def configured_acks() -> bool:
    """`[telemetry] registry_acks` of the device's config."""
    return False


@pytest.fixture
async def uplink(
    tmp_path: Path,
    mosquitto_plain: Broker,
    ack_timeout_s: float,
    registry_acks: bool,
    configured_acks: bool,
) -> AsyncIterator[Uplink]:
    device = unique("dev")
    spool = Spool(tmp_path / "spool", 1 << 20)
    reporter = Reporter(
        device,
        TOPICS,
        lambda: ({}, {}),
        spool,
        ack_timeout_s=ack_timeout_s,
        registry_acks=configured_acks,
    )
    as_registry = MqttSettings(url=mosquitto_plain.url, username="registry")
    as_device = MqttSettings(url=mosquitto_plain.url, username=device)
    async with (
        AgentMqtt(as_registry, client_id=unique("registry")) as registry,
        AgentMqtt(as_device, client_id=device) as client,
    ):
        await registry.subscribe(TOPICS.events(device), TOPICS.telemetry(device))
        await client.subscribe(TOPICS.acks(device))

        async def route_acks() -> None:
            async for received in client.messages():
                await reporter.on_ack(received.payload)

        tasks = [asyncio.create_task(reporter.run()), asyncio.create_task(route_acks())]
        await reporter.connected(client, registry_acks=registry_acks)
        try:
            yield Uplink(device, reporter, registry)
            assert not any(task.done() for task in tasks), "the sender and the ack route run on"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_message_is_resent_until_acknowledged_then_forgotten(uplink: Uplink) -> None:
    await uplink.heard_from_the_registry()
    await uplink.reporter.event("received", model="m", version=2)
    first = await uplink.next()
    again = await uplink.next()
    assert again == first, "the same message, the same msg_seq"
    assert uplink.spool.stats()["pending"] == 1

    await uplink.ack(first["msg_seq"])
    # The spool forgets in a thread; the count follows once the reporter resumes.
    await until(lambda: uplink.reporter.acknowledged == 1)
    assert uplink.spool.stats()["pending"] == 0
    assert uplink.reporter.resent >= 1


async def test_once_the_registry_acknowledged_a_message_none_is_given_up(uplink: Uplink) -> None:
    await uplink.heard_from_the_registry()
    await uplink.reporter.event("received", model="m", version=2)
    copies: Counter[int] = Counter()
    while copies[2] <= FALLBACK_SENDS:  # more than a registry that never acks would get
        copies[(await uplink.next())["version"]] += 1
    assert uplink.spool.stats()["pending"] == 1, "kept however often it was sent"


@pytest.mark.parametrize("ack_timeout_s", [0.05])
async def test_a_registry_that_never_acknowledges_costs_a_few_resends(uplink: Uplink) -> None:
    await uplink.reporter.event("received", model="m", version=1)
    await until(lambda: uplink.spool.stats()["pending"] == 0)
    await uplink.reporter.event("received", model="m", version=2)  # after any copy of the first
    versions: list[int] = []
    while 2 not in versions:
        versions.append((await uplink.next())["version"])
    assert versions == [1] * FALLBACK_SENDS + [2]


@pytest.mark.parametrize(("ack_timeout_s", "configured_acks"), [(0.05, True)])
async def test_a_device_told_its_registry_acknowledges_never_gives_up(uplink: Uplink) -> None:
    await uplink.reporter.event("received", model="m", version=1)
    for _ in range(FALLBACK_SENDS + 2):  # past where a spool that never saw an ack gives up
        assert (await uplink.next())["version"] == 1
    assert uplink.spool.stats()["pending"] == 1, "kept until the registry acknowledges it"
    assert not uplink.spool.registry_acks, "without a single acknowledgement so far"


@pytest.mark.parametrize("ack_timeout_s", [3600.0])
async def test_no_more_than_the_window_is_out_unacknowledged(uplink: Uplink) -> None:
    extra = 10
    for _ in range(ACK_WINDOW + extra):
        await uplink.reporter.telemetry({})
    await until(lambda: uplink.spool.unacknowledged() == ACK_WINDOW)
    seqs = [(await uplink.next())["msg_seq"] for _ in range(ACK_WINDOW)]
    assert uplink.spool.pending() == extra, "the rest waits for room in the window"

    await uplink.ack(*seqs[:extra])
    rest = [(await uplink.next())["msg_seq"] for _ in range(extra)]
    assert rest == sorted(rest)
    assert rest[0] > seqs[-1], "room made by the ack lets the rest go, in order"
    await until(lambda: uplink.spool.pending() == 0)
    await until(lambda: uplink.spool.unacknowledged() == ACK_WINDOW)


@pytest.mark.parametrize("ack_timeout_s", [30.0])  # no resend: the ack or the PUBACK deletes
@pytest.mark.parametrize("registry_acks", [True, False])
async def test_a_delete_the_disk_refuses_does_not_stop_the_sender(
    uplink: Uplink, registry_acks: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_unlink = Path.unlink

    def refused(path: Path, missing_ok: bool = False) -> None:
        if path.parent == uplink.spool.directory and path.name[0].isdigit():
            raise OSError(errno.EIO, "Input/output error", str(path))
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refused)
    for version in (1, 2):
        await uplink.reporter.event("received", model="m", version=version)
        seq = (await uplink.next())["msg_seq"]
        if registry_acks:
            await uplink.ack(seq)
        await until(lambda: uplink.spool.stats()["pending"] == 0)
    monkeypatch.undo()

    # The files that could not go are sent once more after a restart, and the registry drops them.
    assert len(files(uplink.spool.directory)) == 2
    assert Spool(uplink.spool.directory, 1 << 20).pending() == 2
