"""The first steps of an update: the signed release document, then the model file.

The release arrives retained on `{p}/releases/{model}/{version}` and is verified against the
assignment's pin; the model file is taken from the store when it is already there, else
downloaded (free space first, then the chunks, resumable) and verified as a whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from edge_agent.config.settings import DeviceConfig
from edge_agent.errors import StepTimeoutError
from edge_agent.mqtt.link import LinkState
from edge_agent.storage.store import ModelStore
from edge_agent.update.fetch import ChunkFetcher
from edge_agent.uplink.reporting import Reporter
from edge_protocol import AssignedModel, Release, Topics, TrustedState
from edge_protocol.messages import EventKind, UpdatePhase


class Acquisition:
    """Fetches and verifies what an update installs, phase by phase."""

    def __init__(
        self,
        config: DeviceConfig,
        trust: TrustedState,
        *,
        store: ModelStore,
        reporter: Reporter,
        fetcher: ChunkFetcher,
        subscribe: Callable[[str], Coroutine[Any, Any, None]],
        set_phase: Callable[[str, UpdatePhase], Awaitable[None]],
        link: LinkState | None = None,
        unsubscribe: Callable[[str], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._topics = Topics(config.mqtt.topic_prefix)
        self._timeout_s = config.updates.release_timeout_s
        self._trust = trust
        self._store = store
        self._reporter = reporter
        self._fetcher = fetcher
        self._subscribe = subscribe
        self._set_phase = set_phase
        self._link = link if link is not None else LinkState()  # deadlines count connected time
        self._unsubscribe = unsubscribe
        self._releases: dict[tuple[str, int], asyncio.Future[bytes]] = {}

    def on_release(self, model: str, version: int, payload: bytes) -> None:
        """Hand a release document from the broker to the task waiting for it."""
        waiter = self._releases.get((model, version))
        if waiter is not None and not waiter.done() and payload:
            waiter.set_result(payload)

    async def release(self, name: str, pinned: AssignedModel) -> tuple[Release, bytes]:
        """Wait for the pinned release and verify it; return it and its signed bytes."""
        await self._set_phase(name, UpdatePhase.VERIFYING)
        key = (name, pinned.version)
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._releases[key] = waiter
        try:
            await self._subscribe(self._topics.release(name, pinned.version))
            envelope = await self._link.wait_for(waiter, self._timeout_s)
        except TimeoutError as e:
            raise StepTimeoutError(
                f"release {name} v{pinned.version} did not arrive in time"
            ) from e
        finally:
            self._releases.pop(key, None)
            if self._unsubscribe is not None:  # or every reconnect brings the release again
                await self._unsubscribe(self._topics.release(name, pinned.version))
        return self._trust.verify_release(envelope, name, pinned), envelope

    async def model_file(self, name: str, release: Release) -> Path:
        """The verified model file of `release`, downloaded unless the store has it."""
        sha256 = release.artifact.sha256
        if await asyncio.to_thread(self._store.has_model, sha256):
            return self._store.model_path(sha256)
        await self._set_phase(name, UpdatePhase.DOWNLOADING)
        await asyncio.to_thread(self._store.check_free_space, release.artifact.size)
        download = await asyncio.to_thread(self._store.open_download, release.artifact)
        total = len(release.artifact.chunks)
        await self._reporter.event(
            EventKind.DOWNLOADING, model=name, version=release.version,
            progress={"chunks_done": total - len(download.missing()), "chunks_total": total},
        )  # fmt: skip
        await self._fetcher.fetch(download)
        return await asyncio.to_thread(download.finalize)
