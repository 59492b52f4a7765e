"""Fetching an artifact over HTTP: a range request per chunk, retries, stalls and refusals."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edge_agent.errors import DownloadFailedError, DownloadStalledError
from edge_agent.storage.store import ModelStore, PartialDownload
from edge_agent.update.http_fetch import HttpChunkFetcher
from edge_protocol import Artifact
from edge_protocol.errors import SizeExceededError
from tests.agent.blobs import CHUNK, DEVICE, N_CHUNKS, PASSWORD, Blob, make_blob, sha256_of


@dataclass
class BlobServer:
    """Serves artifacts like the registry's GET /v1/artifacts/{sha256}, with faults on demand."""

    root: Path
    ranges: list[str | None] = field(default_factory=list)
    fail_next: int = 0  # answer this many requests with 503 first
    ignore_range: bool = False  # answer 200 with the whole file
    endless: bool = False  # answer 206 and then never stop sending
    endless_sent: int = 0
    endless_over: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, blob: Blob) -> None:
        (self.root / blob.artifact.sha256).write_bytes(blob.data)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        try:
            credentials = aiohttp.BasicAuth.decode(header)
        except ValueError:
            credentials = None
        if credentials is None or (credentials.login, credentials.password) != (DEVICE, PASSWORD):
            return web.json_response({"error": "unauthorized"}, status=401)
        path = self.root / request.match_info["sha256"]
        if not path.is_file():
            return web.json_response({"error": "no such artifact"}, status=404)
        self.ranges.append(request.headers.get("Range"))
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response({"error": "busy"}, status=503)
        if self.endless:
            return await self._endless(request)
        if self.ignore_range:
            return web.Response(body=path.read_bytes())
        return web.FileResponse(path)  # what the registry uses: it answers Range itself

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=206)
        await response.prepare(request)
        block = b"\0" * 65536
        try:
            while self.endless_sent < 1 << 30:
                await response.write(block)
                self.endless_sent += len(block)
        except ConnectionError:
            pass  # the client hung up: what an endless-data defence should do
        finally:
            self.endless_over.set()
        return response


@dataclass
class HttpRig:
    server: BlobServer
    url: str
    session: aiohttp.ClientSession

    def fetcher(self, **options: Any) -> HttpChunkFetcher:
        options.setdefault("username", DEVICE)
        options.setdefault("password", PASSWORD)
        options.setdefault("stall_timeout_s", 5.0)
        options.setdefault("retry_delay_s", 0.02)
        return HttpChunkFetcher(self.url, session=self.session, **options)


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[HttpRig]:
    (tmp_path / "blobs").mkdir()
    blobs = BlobServer(tmp_path / "blobs")
    app = web.Application()
    app.router.add_get("/v1/artifacts/{sha256}", blobs.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield HttpRig(blobs, str(server.make_url("/")), session)
    await server.close()


def open_download(tmp_path: Path, artifact: Artifact) -> PartialDownload:
    return ModelStore(tmp_path / "state").open_download(artifact)


def chunk_range(artifact: Artifact, index: int) -> str:
    start = index * artifact.chunk_size
    return f"bytes={start}-{start + artifact.chunk_length(index) - 1}"


async def test_http_downloads_each_chunk_with_its_own_range(
    tmp_path: Path, http: HttpRig, blob: Blob
) -> None:
    http.server.add(blob)
    download = open_download(tmp_path, blob.artifact)
    seen: list[int] = []

    written = await http.fetcher().fetch(download, lambda have, _n: seen.append(have))

    assert written == N_CHUNKS
    assert seen == list(range(1, N_CHUNKS + 1))
    assert http.server.ranges == [chunk_range(blob.artifact, i) for i in range(N_CHUNKS)]
    assert sha256_of(download.finalize()) == blob.artifact.sha256


async def test_http_refetches_a_chunk_whose_bitmap_update_was_lost(
    tmp_path: Path, http: HttpRig, blob: Blob
) -> None:
    http.server.add(blob)
    download = open_download(tmp_path, blob.artifact)
    download.write_chunk(0, blob.chunk(0))
    download.write_chunk(1, blob.chunk(1))
    part = tmp_path / "state" / "downloads" / f"{blob.artifact.sha256}.part"
    fd = os.open(part, os.O_WRONLY)  # chunk 2's bytes landed; the crash came before the bitmap
    try:
        os.pwrite(fd, blob.chunk(2), 2 * CHUNK)
    finally:
        os.close(fd)

    resumed = open_download(tmp_path, blob.artifact)
    fetcher = http.fetcher()
    written = await fetcher.fetch(resumed)

    assert written == N_CHUNKS - 2 == fetcher.chunks_written
    assert http.server.ranges == [chunk_range(blob.artifact, i) for i in range(2, N_CHUNKS)]
    assert sha256_of(resumed.finalize()) == blob.artifact.sha256


async def test_http_retries_server_errors(tmp_path: Path, http: HttpRig, blob: Blob) -> None:
    http.server.add(blob)
    http.server.fail_next = 3

    assert await http.fetcher().fetch(open_download(tmp_path, blob.artifact)) == N_CHUNKS
    assert http.server.ranges[:4] == [chunk_range(blob.artifact, 0)] * 4


async def test_http_stalls_when_the_server_keeps_failing(
    tmp_path: Path, http: HttpRig, blob: Blob
) -> None:
    http.server.add(blob)
    http.server.fail_next = 1_000_000

    with pytest.raises(DownloadStalledError, match="HTTP 503"):
        await http.fetcher(stall_timeout_s=0.5).fetch(open_download(tmp_path, blob.artifact))
    assert len(http.server.ranges) >= 3


async def test_http_stalls_when_the_server_is_unreachable(tmp_path: Path, blob: Blob) -> None:
    async with aiohttp.ClientSession() as session:
        fetcher = HttpChunkFetcher(
            "http://127.0.0.1:9", username=DEVICE, password=PASSWORD, session=session,
            stall_timeout_s=0.3, retry_delay_s=0.02,
        )  # fmt: skip
        with pytest.raises(DownloadStalledError, match="not fetched"):
            await fetcher.fetch(open_download(tmp_path, blob.artifact))


@pytest.mark.parametrize(
    ("password", "unknown", "message"),
    [
        ("wrong", False, "refused this device's credentials"),
        (PASSWORD, True, "has no artifact"),
    ],
)
async def test_http_refusals_fail_the_download_at_once(
    tmp_path: Path, http: HttpRig, blob: Blob, *, password: str, unknown: bool, message: str
) -> None:
    if not unknown:
        http.server.add(blob)
    fetcher = http.fetcher(password=password)

    with pytest.raises(DownloadFailedError, match=message):
        await fetcher.fetch(open_download(tmp_path, blob.artifact))
    assert fetcher.chunks_written == 0


async def test_http_endless_data_is_cut_off_after_one_byte_too_many(
    tmp_path: Path, http: HttpRig, blob: Blob
) -> None:
    http.server.add(blob)
    http.server.endless = True
    download = open_download(tmp_path, blob.artifact)

    with pytest.raises(SizeExceededError, match="chunk 0 has 1025 bytes"):
        await http.fetcher().fetch(download)

    await asyncio.wait_for(http.server.endless_over.wait(), 10)
    assert http.server.endless_sent < 64 << 20  # hung up at once: only socket buffers filled
    assert download.have_count == 0


async def test_http_accepts_200_only_for_a_single_chunk_artifact(
    tmp_path: Path, http: HttpRig
) -> None:
    http.server.ignore_range = True
    single, multi = make_blob(CHUNK - 10), make_blob()
    http.server.add(single)
    http.server.add(multi)

    assert await http.fetcher().fetch(open_download(tmp_path, single.artifact)) == 1
    with pytest.raises(DownloadFailedError, match="unexpected HTTP 200"):
        await http.fetcher().fetch(open_download(tmp_path, multi.artifact))
