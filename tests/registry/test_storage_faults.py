"""PostgreSQL going away under a running storage: a clear 503-class error, then recovery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from model_registry.api.errors import error_middleware
from model_registry.errors import UnavailableError
from model_registry.storage import PostgresStorage
from tests.support.postgres import Schema, new_schema, schema_url
from tests.support.tcp_link import TcpLink

POLL_S = 0.1
POLLS = 200  # 20 s at most for the storage to come back


@pytest.fixture
def schema(postgres: str) -> Iterator[Schema]:
    with new_schema() as created:
        yield created


@pytest.fixture
async def link(postgres: str) -> AsyncIterator[TcpLink]:
    server = urlsplit(postgres)
    proxy = TcpLink(server.port or 5432, server.hostname or "127.0.0.1")
    await proxy.up()
    yield proxy
    await proxy.down()


@pytest.fixture
async def storage(link: TcpLink, schema: Schema, postgres: str) -> AsyncIterator[PostgresStorage]:
    parts = urlsplit(postgres)
    through_link = parts._replace(netloc=f"{parts.username}@127.0.0.1:{link.port}").geturl()
    opened = PostgresStorage(schema_url(schema.name, through_link), pool_wait_s=1.0)
    await opened.open()
    yield opened
    await opened.close()


async def test_a_lost_server_is_unavailable_and_then_back(
    storage: PostgresStorage, link: TcpLink
) -> None:
    await storage.add_root(1, b"root one")
    assert await storage.acquire_duty("maintenance") is True

    await link.down()

    with pytest.raises(UnavailableError, match="the database is unavailable"):
        await storage.roots()
    with pytest.raises(UnavailableError):
        await storage.add_root(2, b"root two")
    assert await storage.acquire_duty("maintenance") is False  # the lock went with the session

    await link.up()

    for _ in range(POLLS):
        try:
            assert await storage.roots() == [(1, b"root one")]  # nothing half-written
            break
        except UnavailableError:
            await asyncio.sleep(POLL_S)
    else:
        pytest.fail("the storage never reconnected")
    await storage.add_root(2, b"root two")
    assert await storage.acquire_duty("maintenance") is True


async def test_the_api_answers_503_while_the_database_is_unavailable() -> None:
    async def handler(request: web.Request) -> web.Response:
        raise UnavailableError("the database is unavailable: connection refused")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/")
        assert response.status == 503
        assert await response.json() == {"error": "the database is unavailable: connection refused"}
