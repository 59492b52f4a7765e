"""Getting an artifact's chunks into a `PartialDownload`, over MQTT or HTTP.

`MqttChunkFetcher` subscribes only to the retained chunk topics a download still lacks, a batch
at a time, so a resumed download fetches only what is missing. `HttpChunkFetcher` asks the
registry for one chunk per Range request. Both hand every chunk to `PartialDownload.write_chunk`
(in a worker thread), which verifies it before it touches the disk; a chunk that fails
verification ends the fetch with its `RejectedError`, because the release is then rejected.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from edge_agent.errors import DownloadFailedError, DownloadStalledError
from edge_agent.store import PartialDownload
from edge_protocol import Artifact, FormatError, Topics
from edge_protocol.topics import KIND_ARTIFACT

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (chunks on disk, chunks in the artifact)
TopicsCall = Callable[[Sequence[str]], Awaitable[None]]


class ChunkFetcher(Protocol):
    """Fills a partial download from some transport."""

    async def fetch(self, download: PartialDownload, progress: Progress | None = None) -> int:
        """Fetch every missing chunk; return how many this call wrote."""
        ...


@dataclass(eq=False)
class _Active:
    """The state of one artifact being fetched over MQTT."""

    download: PartialDownload
    queue: asyncio.Queue[tuple[int, bytes]] = field(default_factory=asyncio.Queue)
    pending: set[int] = field(default_factory=set)  # subscribed to, not yet received
    batch: list[str] = field(default_factory=list)  # topics of the current subscription batch
    written: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)


class MqttChunkFetcher:
    """Fetches chunks from their retained MQTT topics through the agent's subscribe callables."""

    def __init__(
        self,
        topics: Topics,
        subscribe: TopicsCall,
        unsubscribe: TopicsCall,
        *,
        stall_timeout_s: float,
        resubscribe_after_s: float = 10.0,
        batch: int = 64,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self._topics = topics
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        self._stall_timeout_s = stall_timeout_s
        self._resubscribe_after_s = resubscribe_after_s
        self._batch = batch
        self._active: dict[str, _Active] = {}
        self.chunks_received = 0
        self.chunks_written = 0

    def feed(self, topic: str, payload: bytes) -> None:
        """Route one artifact-topic message to its download (call on the loop; never blocks)."""
        try:
            ref = self._topics.parse(topic)
        except FormatError:
            return
        active = self._active.get(ref.name) if ref.kind == KIND_ARTIFACT else None
        # An empty payload is a cleared retained topic, never a chunk (docs/protocol.md 6).
        if active is None or not payload or ref.number is None:
            return
        self.chunks_received += 1
        # Only chunks asked for and not yet queued: duplicates cannot pile up in memory.
        if ref.number in active.pending:
            active.pending.discard(ref.number)
            active.queue.put_nowait((ref.number, payload))

    async def fetch(self, download: PartialDownload, progress: Progress | None = None) -> int:
        """Fetch every missing chunk of `download`; return how many this call wrote."""
        sha256 = download.artifact.sha256
        if sha256 in self._active:
            raise RuntimeError(f"artifact {sha256} is already being fetched")
        active = _Active(download)
        self._active[sha256] = active
        try:
            while not download.complete:
                if not active.pending and active.queue.empty():
                    await self._next_batch(active)
                item = await self._next_chunk(active)
                if item is not None:
                    await self._write(active, *item, progress)
            return active.written
        finally:
            del self._active[sha256]
            await self._release(active)

    async def resubscribe(self) -> None:
        """Subscribe again to every chunk still awaited (after a reconnect to the broker)."""
        for active in list(self._active.values()):
            await self._subscribe_pending(active)

    async def _next_batch(self, active: _Active) -> None:
        await self._drop_batch(active)
        artifact = active.download.artifact
        indices = active.download.missing()[: self._batch]
        active.batch = [self._topics.artifact_chunk(artifact.sha256, i) for i in indices]
        # Registered before subscribing: retained chunks may arrive before the SUBACK.
        active.pending = set(indices)
        active.last_activity = time.monotonic()
        await self._subscribe(active.batch)

    async def _drop_batch(self, active: _Active) -> None:
        topics, active.batch = active.batch, []
        if topics:
            await self._unsubscribe(topics)

    async def _release(self, active: _Active) -> None:
        """Unsubscribe the last batch without masking the error that may be ending the fetch."""
        try:
            await self._drop_batch(active)
        except Exception:
            # A lingering subscription costs a few retained messages; a lost error costs more.
            log.warning(
                "could not unsubscribe chunk topics of %s",
                active.download.artifact.sha256,
                exc_info=True,
            )

    async def _subscribe_pending(self, active: _Active) -> None:
        sha256 = active.download.artifact.sha256
        topics = [self._topics.artifact_chunk(sha256, i) for i in sorted(active.pending)]
        active.last_activity = time.monotonic()
        if topics:
            await self._subscribe(topics)

    async def _next_chunk(self, active: _Active) -> tuple[int, bytes] | None:
        """Wait for a chunk; on silence resubscribe (None), on a stall raise."""
        deadline = min(
            active.last_activity + self._resubscribe_after_s,
            active.last_progress + self._stall_timeout_s,
        )
        try:
            item = await asyncio.wait_for(active.queue.get(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if time.monotonic() - active.last_progress >= self._stall_timeout_s:
                raise DownloadStalledError(
                    _stalled(active.download, self._stall_timeout_s)
                ) from None
            # A broker that restarted has lost our subscriptions; retained chunks come back.
            log.info(
                "no chunk of %s for a while: subscribing again", active.download.artifact.sha256
            )
            await self._subscribe_pending(active)
            return None
        active.last_activity = time.monotonic()
        return item

    async def _write(
        self, active: _Active, index: int, data: bytes, progress: Progress | None
    ) -> None:
        download = active.download
        if await asyncio.to_thread(download.write_chunk, index, data):
            active.written += 1
            self.chunks_written += 1
            active.last_progress = time.monotonic()
            if progress is not None:
                progress(download.have_count, len(download.artifact.chunks))


class _TransientError(Exception):
    """An HTTP answer worth retrying (5xx, 408, 429)."""


_RETRY_STATUSES = frozenset({408, 429})


class HttpChunkFetcher:
    """Fetches chunks from the registry's `GET /v1/artifacts/{sha256}` with one Range each."""

    def __init__(
        self,
        base_url: str,
        *,
        username: str,
        password: str,
        session: aiohttp.ClientSession,
        stall_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        retry_delay_s: float = 0.5,
        max_retry_delay_s: float = 10.0,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        # Built by hand: aiohttp deprecates BasicAuth, and its replacement needs aiohttp >= 3.14.
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._authorization = f"Basic {token}"
        self._session = session
        self._stall_timeout_s = stall_timeout_s
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._retry_delay_s = retry_delay_s
        self._max_retry_delay_s = max_retry_delay_s
        self.chunks_written = 0

    async def fetch(self, download: PartialDownload, progress: Progress | None = None) -> int:
        """Fetch every missing chunk of `download`; return how many this call wrote."""
        written = 0
        total = len(download.artifact.chunks)
        for index in download.missing():
            data = await self._get_with_retries(download.artifact, index)
            if await asyncio.to_thread(download.write_chunk, index, data):
                written += 1
                self.chunks_written += 1
                if progress is not None:
                    progress(download.have_count, total)
        return written

    async def _get_with_retries(self, artifact: Artifact, index: int) -> bytes:
        """Get one chunk, retrying transient failures while a retry fits in the stall timeout."""
        deadline = time.monotonic() + self._stall_timeout_s
        delay = self._retry_delay_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(0.0, remaining)):
                    return await self._get(artifact, index)
            except (aiohttp.ClientError, TimeoutError, _TransientError) as e:
                if time.monotonic() + delay >= deadline:
                    cause = str(e) or type(e).__name__
                    raise DownloadStalledError(
                        f"chunk {index} of {artifact.sha256} not fetched from {self._base_url} "
                        f"within {self._stall_timeout_s:g}s; last error: {cause}"
                    ) from e
                log.info("chunk %d of %s: %s; retrying in %.1fs", index, artifact.sha256, e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_retry_delay_s)

    async def _get(self, artifact: Artifact, index: int) -> bytes:
        """One Range request; reads at most the chunk's length plus one byte."""
        start = index * artifact.chunk_size
        length = artifact.chunk_length(index)
        url = f"{self._base_url}/v1/artifacts/{artifact.sha256}"
        headers = {
            "Range": f"bytes={start}-{start + length - 1}",
            "Authorization": self._authorization,
        }
        async with self._session.get(url, headers=headers, ssl=self._ssl) as r:
            _check_status(r.status, url, single_chunk=len(artifact.chunks) == 1)
            # One byte past the exact length is enough to prove "too long" (size_exceeded);
            # leaving the block unread closes the connection instead of draining it.
            return await _read_at_most(r.content, length + 1)


def _check_status(status: int, url: str, *, single_chunk: bool) -> None:
    if status == 206 or (status == 200 and single_chunk):
        return
    if status >= 500 or status in _RETRY_STATUSES:
        raise _TransientError(f"HTTP {status} from {url}")
    if status in (401, 403):
        raise DownloadFailedError(
            f"the registry refused this device's credentials (HTTP {status}) for {url}; "
            "check the device id and MQTT password it was provisioned with"
        )
    if status == 404:
        raise DownloadFailedError(f"the registry has no artifact at {url} (HTTP 404)")
    raise DownloadFailedError(f"unexpected HTTP {status} for a Range request to {url}")


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Read until EOF or `limit` bytes, whichever comes first; never buffers more."""
    buffer = bytearray()
    while len(buffer) < limit:
        piece = await stream.read(limit - len(buffer))
        if not piece:
            break
        buffer += piece
    return bytes(buffer)


def _stalled(download: PartialDownload, timeout_s: float) -> str:
    artifact = download.artifact
    return (
        f"no chunk of {artifact.sha256} arrived in {timeout_s:g}s; "
        f"{download.have_count} of {len(artifact.chunks)} chunks are on disk"
    )
