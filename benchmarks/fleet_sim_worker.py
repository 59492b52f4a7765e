"""Many simulated devices in one asyncio loop, each running the agent's own update code path.

Per device: one `edge_agent.mqtt.AgentMqtt` connection with the device's credentials,
`edge_protocol.TrustedState` to verify the assignment and the release, and
`edge_agent.update.fetch.MqttChunkFetcher` + `edge_agent.storage.store.ModelStore` to
download, verify every chunk, persist and verify the whole artifact. No onnxruntime: a device
is "verified" once the artifact is final in its store. Prints one JSON line per event on stdout.

Usage: python -m benchmarks.fleet_sim_worker SPEC.json
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from edge_agent.config.settings import MqttSettings
from edge_agent.mqtt import AgentMqtt
from edge_agent.storage.store import ModelStore
from edge_agent.update.fetch import MqttChunkFetcher
from edge_protocol import Assignment, RejectedError, Topics, TrustedState
from edge_protocol.topics import KIND_ARTIFACT, KIND_ASSIGNMENT, KIND_RELEASE


def emit(**fields: Any) -> None:
    """One event line for the driver."""
    sys.stdout.write(json.dumps({"t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


class SimDevice:
    """One device: connection, trust state, store, and the update path."""

    def __init__(self, spec: dict[str, Any], url: str, prefix: str) -> None:
        self.device_id: str = spec["device_id"]
        self.settings = MqttSettings(
            url=url, username=self.device_id, password=spec["password"], topic_prefix=prefix
        )
        self.topics = Topics(prefix)
        self.trust = TrustedState(Path(spec["root"]).read_bytes(), device_id=self.device_id)
        self.store = ModelStore(Path(spec["state_dir"]))
        self.releases: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        self.client: AgentMqtt | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self, connected: asyncio.Event) -> None:
        """Connect, follow the assignment topic, update on every new assignment."""
        async with AgentMqtt(self.settings, client_id=self.device_id) as client:
            self.client = client
            fetcher = MqttChunkFetcher(
                self.topics,
                lambda topics: client.subscribe(*topics),
                lambda topics: client.unsubscribe(*topics),
                stall_timeout_s=120,
            )
            await client.subscribe(self.topics.assignment(self.device_id))
            connected.set()
            async for message in client.messages():
                ref = self.topics.parse(message.topic)
                if ref.kind == KIND_ARTIFACT:
                    fetcher.feed(message.topic, message.payload)
                elif ref.kind == KIND_RELEASE and ref.number is not None:
                    waiter = self.releases.get((ref.name, ref.number))
                    if waiter is not None and not waiter.done() and message.payload:
                        waiter.set_result(message.payload)
                elif ref.kind == KIND_ASSIGNMENT and message.payload:
                    try:
                        assignment = self.trust.verify_assignment(message.payload)
                    except RejectedError as e:
                        emit(event="rejected", device=self.device_id, detail=str(e))
                        continue
                    task = asyncio.create_task(self.update(assignment, fetcher))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)

    async def update(self, assignment: Assignment, fetcher: MqttChunkFetcher) -> None:
        """Release -> verified -> chunks -> verified artifact, as the agent's updater does."""
        assert self.client is not None  # noqa: S101 - set before any message
        for name, pinned in assignment.models.items():
            key = (name, pinned.version)
            waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            self.releases[key] = waiter
            try:
                await self.client.subscribe(self.topics.release(name, pinned.version))
                envelope = await asyncio.wait_for(waiter, 120)
            finally:
                self.releases.pop(key, None)
            release = self.trust.verify_release(envelope, name, pinned)
            sha256 = release.artifact.sha256
            if not await asyncio.to_thread(self.store.has_model, sha256):
                download = await asyncio.to_thread(self.store.open_download, release.artifact)
                await fetcher.fetch(download)
                await asyncio.to_thread(download.finalize)
            emit(event="verified", device=self.device_id, model=name, version=pinned.version)


async def main(spec_file: Path) -> None:
    """Run every device of the spec until stdin closes."""
    spec = json.loads(await asyncio.to_thread(spec_file.read_text))
    devices = [SimDevice(d, spec["url"], spec["prefix"]) for d in spec["devices"]]
    events = [asyncio.Event() for _ in devices]
    tasks = []
    for device, event in zip(devices, events, strict=True):
        tasks.append(asyncio.create_task(device.run(event)))
        await asyncio.sleep(0.005)  # do not hit the broker with every CONNECT at once
    await asyncio.gather(*(event.wait() for event in events))
    emit(event="ready", devices=len(devices))
    # The driver closes stdin to stop us.
    await asyncio.to_thread(sys.stdin.read)
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
