"""Events still go upstream when the spool's disk is full.

The spool is on a small tmpfs the test fills; the reporter speaks to a real mosquitto through
the agent's own MQTT adapter, and an observer with the registry's credentials reads what
arrives. An event the spool cannot keep is held in memory and sent, in msg_seq order, on the
connection that is up or on the next one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.mqtt import AgentMqtt
from edge_agent.uplink.reporting import Reporter
from edge_agent.uplink.spool import Spool
from tests.agent.mqtt_helpers import DEADLINE_S, TOPICS, next_message, settings_for, unique
from tests.support.broker import Broker
from tests.support.disk import SmallDisk, small_disk

DEVICE = "dev-a"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """The spool's file system: a 1 MiB tmpfs."""
    with small_disk(tmp_path / "disk", 1024 * 1024) as mounted:
        yield mounted


@pytest.fixture
async def observer(mosquitto_auth: Broker) -> AsyncIterator[AgentMqtt]:
    async with AgentMqtt(settings_for(mosquitto_auth, "registry"), client_id=unique("obs")) as obs:
        await obs.subscribe(TOPICS.events(DEVICE))
        yield obs


async def _events(observer: AgentMqtt, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(DEADLINE_S):
        return [json.loads((await next_message(observer)).payload) for _ in range(count)]


async def test_events_the_full_spool_cannot_keep_are_sent_in_order(
    disk: SmallDisk, mosquitto_auth: Broker, observer: AgentMqtt
) -> None:
    spool = Spool(disk.path / "spool", 1 << 20)
    reporter = Reporter(DEVICE, TOPICS, lambda: ({}, {}), spool)
    sender = asyncio.create_task(reporter.run())
    try:
        await reporter.event("received", model="clf", version=1)  # spooled: nothing sent yet
        disk.fill()
        await reporter.event("failed", model="clf", version=2, reason="disk_full", detail="x")
        await reporter.event("rejected", model="clf", version=3, reason="chunk_hash", detail="y")
        settings = settings_for(mosquitto_auth, DEVICE)
        async with AgentMqtt(settings, client_id=unique(DEVICE)) as device:
            await reporter.connected(device)
            first = await _events(observer, 3)
            await reporter.event("failed", model="clf", version=4, reason="disk_full", detail="z")
            (live,) = await _events(observer, 1)
            # Deleting message 1 frees room, so message 4 may have been spooled after all; it
            # is deleted at its PUBACK, which can land after the observer has the message.
            await reporter.flush(DEADLINE_S)
            reporter.disconnected()
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    assert [e["version"] for e in first] == [1, 2, 3]
    seqs = [e["msg_seq"] for e in [*first, live]]
    assert seqs == sorted(set(seqs)), "numbered in order, none twice"
    assert live["version"] == 4
    assert spool.stats()["pending"] == 0
