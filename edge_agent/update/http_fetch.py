"""Getting an artifact's chunks from the registry over HTTP, one Range request per chunk.

Every chunk goes to `PartialDownload.write_chunk` (in a worker thread), which verifies it
before it touches the disk. Transient failures (a dropped connection, 5xx, 408, 429) are
retried with backoff for as long as a retry fits in the stall timeout.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import time

import aiohttp

from edge_agent.errors import DownloadFailedError, DownloadStalledError
from edge_agent.storage.store import PartialDownload
from edge_agent.update.fetch import Progress
from edge_protocol import Artifact

log = logging.getLogger(__name__)


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
