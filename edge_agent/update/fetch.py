"""Getting an artifact's chunks from their retained MQTT topics into a `PartialDownload`.

A sliding window: the fetcher subscribes to at most `window` chunk topics the download still
lacks, tops the window up once half of it has arrived, and unsubscribes the topics of chunks it
has. A resumed download asks only for what is missing; a lost link costs at most the window.

A lost link pauses a download and never fails it. On the next connection the fetcher sends
again only the subscriptions the broker cannot still hold: when the broker kept the persistent
session, the chunks asked for come from it (what it had sent unacknowledged and what it queued),
so only subscriptions it never acknowledged are renewed; when the session is gone, the window
is subscribed again and its retained chunks come back once. A subscription is never repeated
on the connection that made it: that would bring every retained chunk of it again.

Every chunk goes to `PartialDownload.write_chunk` (in a worker thread), which verifies it
before it touches the disk; a chunk that fails verification ends the fetch with its
`RejectedError`. The stall deadline counts connected time without a new verified chunk.
`edge_agent.update.http_fetch` is the HTTP transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edge_agent.errors import (
    BrokerError,
    DownloadFailedError,
    DownloadStalledError,
    MqttSubscribeError,
)
from edge_agent.mqtt.link import LinkState
from edge_agent.storage.store import PartialDownload
from edge_protocol import FormatError, Topics
from edge_protocol.topics import KIND_ARTIFACT

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (chunks on disk, chunks in the artifact)
TopicsCall = Callable[[Sequence[str]], Awaitable[None]]
WINDOW = 16  # chunk topics subscribed at once per download
# A refused chunk subscription is asked again after 1, 2, 4, 8 s of connected time before the
# download fails: NATS refuses one whose JetStream consumer took it more than 4 s to make.
SUBSCRIBE_TRIES = 5
RETRY_REFUSED_S = 1.0
RESUBSCRIBE_AFTER_S = 30.0  # a resumed session that brings no chunk this long is not trusted


class ChunkFetcher(Protocol):
    """Fills a partial download from some transport."""

    async def fetch(self, download: PartialDownload, progress: Progress | None = None) -> int:
        """Fetch every missing chunk; return how many this call wrote."""
        ...


@dataclass(eq=False)
class _Active:
    """The state of one artifact being fetched over MQTT."""

    download: PartialDownload
    progress_mark: float  # connected time at the last new chunk (or the start)
    epoch: int  # the connection `subscribed` was last brought up to date for
    queue: asyncio.Queue[tuple[int, bytes] | None] = field(default_factory=asyncio.Queue)
    window: set[int] = field(default_factory=set)  # asked for, not yet received
    queued: set[int] = field(default_factory=set)  # received, not yet written
    subscribed: set[int] = field(default_factory=set)  # acknowledged by the broker, still held
    spent: set[int] = field(default_factory=set)  # received, topic still subscribed
    cursor: int = 0  # every chunk below it is on disk, queued or in the window
    doubt_session_at: float | None = None  # connected time to renew what a session should bring
    stuck_epoch: int = -1  # subscribing failed on this connection: wait for the next one
    refusals: int = 0  # SUBACKs in a row that refused some of the window
    retry_at: float | None = None  # connected time to ask again for what was refused
    trouble: str = ""  # the last broker error subscribing met, for the stall's reason
    written: int = 0


class MqttChunkFetcher:
    """Fetches chunks from their retained MQTT topics through the agent's subscribe callables.

    `subscribe` and `unsubscribe` act on the current connection only; `link` tells the fetcher
    when connections come and go (without one it assumes a single connection that stays up).
    """

    def __init__(
        self,
        topics: Topics,
        subscribe: TopicsCall,
        unsubscribe: TopicsCall,
        *,
        stall_timeout_s: float,
        link: LinkState | None = None,
        window: int = WINDOW,
        resubscribe_after_s: float = RESUBSCRIBE_AFTER_S,
        subscribe_tries: int = SUBSCRIBE_TRIES,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._topics = topics
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        self._stall_timeout_s = stall_timeout_s
        self._link = link if link is not None else LinkState()
        self._link.add_listener(self._wake)
        self._window = window
        self._resubscribe_after_s = resubscribe_after_s
        self._subscribe_tries = subscribe_tries
        self._active: dict[str, _Active] = {}
        self.chunks_received = 0  # chunk messages for a download in progress, duplicates too
        self.chunk_bytes_received = 0
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
        self.chunk_bytes_received += len(payload)
        index = ref.number
        if index in active.window:
            active.window.discard(index)
            active.doubt_session_at = None  # the session delivers
        elif not self._unasked_but_useful(active, index):
            return  # a duplicate: memory holds each chunk at most once
        active.queued.add(index)
        if index in active.subscribed:
            active.spent.add(index)
        active.queue.put_nowait((index, payload))

    async def fetch(self, download: PartialDownload, progress: Progress | None = None) -> int:
        """Fetch every missing chunk of `download`; return how many this call wrote."""
        sha256 = download.artifact.sha256
        if sha256 in self._active:
            raise RuntimeError(f"artifact {sha256} is already being fetched")
        active = _Active(download, self._link.connected_time(), self._link.epoch)
        self._active[sha256] = active
        try:
            while not download.complete:
                self._check_stall(active)  # also when every connection fails to subscribe
                await self._keep_subscribed(active)
                item = await self._next_chunk(active)
                if item is not None:
                    await self._write(active, *item, progress)
            return active.written
        finally:
            del self._active[sha256]
            await self._release(active)

    # --- subscriptions -------------------------------------------------------------------

    async def _keep_subscribed(self, active: _Active) -> None:
        """Bring the broker's subscriptions up to date for the current connection."""
        link = self._link
        if not link.up or active.stuck_epoch == link.epoch:
            return
        if active.retry_at is not None and link.connected_time() < active.retry_at:
            return
        if active.epoch != link.epoch:
            self._on_new_connection(active)
        try:
            await self._top_up(active)
            await self._drop_spent(active)
        except BrokerError as e:
            # The link is going (lost, or cut for an acknowledgement that never came: the
            # adapter's ack timeout); the next connection resumes.
            active.stuck_epoch = link.epoch
            active.trouble = str(e)
            log.info("chunk subscriptions wait for the next connection: %s", e)

    def _on_new_connection(self, active: _Active) -> None:
        link = self._link
        active.epoch = link.epoch
        if not link.session_present:  # the broker forgot every subscription we had
            active.subscribed.clear()
            active.spent.clear()
            active.doubt_session_at = None
        elif active.window & active.subscribed:
            active.doubt_session_at = link.connected_time() + self._resubscribe_after_s

    async def _top_up(self, active: _Active) -> None:
        unconfirmed = sorted(active.window - active.subscribed)
        fresh: list[int] = []
        if len(active.window) <= self._window // 2:
            fresh = self._next_missing(active, self._window - len(active.window))
        indices = unconfirmed + fresh
        if not indices:
            return
        # Registered before subscribing: retained chunks may arrive before the SUBACK.
        active.window.update(fresh)
        try:
            await self._subscribe(self._chunk_topics(active, indices))
        except MqttSubscribeError as e:
            named = {t.rsplit("/", 1)[1] for t in e.refused}
            refused = {i for i in indices if str(i) in named} or set(indices)
            self._held(active, [i for i in indices if i not in refused])
            self._refused(active, e)
            return
        active.refusals, active.retry_at, active.trouble = 0, None, ""
        self._held(active, indices)

    def _held(self, active: _Active, indices: Sequence[int]) -> None:
        """The broker granted these chunk topics."""
        active.subscribed.update(indices)
        active.spent.update(i for i in indices if i not in active.window)

    def _refused(self, active: _Active, error: MqttSubscribeError) -> None:
        """Ask again later, or fail once the broker refused SUBSCRIBE_TRIES times in a row."""
        active.refusals += 1
        if active.refusals >= self._subscribe_tries:
            raise DownloadFailedError(
                f"{error}: the broker's ACL must let this device read the artifact topics"
            ) from error
        delay = RETRY_REFUSED_S * 2 ** (active.refusals - 1)
        active.retry_at = self._link.connected_time() + delay
        log.info("%s; asking again in %g s of connected time", error, delay)

    async def _drop_spent(self, active: _Active) -> None:
        # In batches: one UNSUBSCRIBE per half window, not one per chunk.
        if len(active.spent) < max(1, self._window // 2) and active.window:
            return
        spent = sorted(active.spent)
        if spent:
            await self._unsubscribe(self._chunk_topics(active, spent))
            active.spent.difference_update(spent)
            active.subscribed.difference_update(spent)

    def _next_missing(self, active: _Active, count: int) -> list[int]:
        download, total = active.download, len(active.download.artifact.chunks)
        found: list[int] = []
        while active.cursor < total and len(found) < count:
            index = active.cursor
            if not download.has(index) and index not in active.window | active.queued:
                found.append(index)
            active.cursor += 1
        return found

    def _unasked_but_useful(self, active: _Active, index: int) -> bool:
        """A missing chunk nobody asked for (a session of an earlier run brought it)."""
        if index in active.queued or not 0 <= index < len(active.download.artifact.chunks):
            return False
        return not active.download.has(index) and active.queue.qsize() < self._window

    async def _release(self, active: _Active) -> None:
        """Unsubscribe what is left without masking the error that may be ending the fetch."""
        held = sorted(active.subscribed)
        if not held or not self._link.up:
            return  # a session that outlives us costs at most a window of retained chunks
        try:
            await self._unsubscribe(self._chunk_topics(active, held))
        except Exception as e:  # noqa: BLE001 - logged; the fetch's own outcome matters more
            log.info("could not unsubscribe the chunk topics of %s: %s", _sha(active), e)

    def _chunk_topics(self, active: _Active, indices: Sequence[int]) -> list[str]:
        return [self._topics.artifact_chunk(_sha(active), i) for i in indices]

    # --- waiting and writing ---------------------------------------------------------------

    async def _next_chunk(self, active: _Active) -> tuple[int, bytes] | None:
        """The next chunk; None when the link changed or a resumed session looks empty."""
        link = self._link
        timeout = None  # while disconnected, only a new connection moves things on
        if link.up:
            timeout = self._check_stall(active)
            for due in (active.doubt_session_at, active.retry_at):  # woken to act on time
                if due is not None:
                    timeout = min(timeout, max(0.0, due - link.connected_time()))
        try:
            return await asyncio.wait_for(active.queue.get(), timeout)
        except TimeoutError:
            self._doubt_session(active)
            return None

    def _check_stall(self, active: _Active) -> float:
        """Connected seconds left before the stall deadline; DownloadStalledError past it."""
        remaining = self._stall_timeout_s - (self._link.connected_time() - active.progress_mark)
        if remaining <= 0 and self._link.up:
            raise DownloadStalledError(_stalled(active, self._stall_timeout_s))
        return remaining

    def _doubt_session(self, active: _Active) -> None:
        due = active.doubt_session_at
        if due is None or self._link.connected_time() < due:
            return
        # The broker said it kept our session, yet nothing came: subscribe again, once.
        log.info("the resumed session brought no chunk of %s: subscribing again", _sha(active))
        active.doubt_session_at = None
        active.subscribed.difference_update(active.window)

    async def _write(
        self, active: _Active, index: int, data: bytes, progress: Progress | None
    ) -> None:
        download = active.download
        try:
            written = await asyncio.to_thread(download.write_chunk, index, data)
        finally:
            active.queued.discard(index)
        if written:
            active.written += 1
            self.chunks_written += 1
            active.progress_mark = self._link.connected_time()
            if progress is not None:
                progress(download.have_count, len(download.artifact.chunks))

    def _wake(self) -> None:
        """The link changed: every fetch looks at its subscriptions again."""
        for active in self._active.values():
            active.queue.put_nowait(None)


def _sha(active: _Active) -> str:
    return active.download.artifact.sha256


def _stalled(active: _Active, timeout_s: float) -> str:
    download = active.download
    artifact = download.artifact
    text = (
        f"no new chunk of {artifact.sha256} in {timeout_s:g} s connected to the broker; "
        f"{download.have_count} of {len(artifact.chunks)} chunks are on disk"
    )
    return f"{text}; subscribing last failed: {active.trouble}" if active.trouble else text
