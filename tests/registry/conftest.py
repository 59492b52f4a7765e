"""Registry fixtures: a real home made by `init`, its context, and the API on a real socket."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from model_registry.api.app import create_app
from model_registry.config import ApiConfig, load_config
from model_registry.home import InitResult, init_home
from model_registry.services.context import RegistryContext
from model_registry.storage import Storage, open_storage
from tests.registry.hostile_input import DATASET_MB, UPLOAD_MB
from tests.support.postgres import new_schema


@dataclass
class Api:
    """A registry API under test: its client, context and admin token."""

    client: TestClient
    ctx: RegistryContext
    admin_token: str

    def auth(self, token: str | None = None) -> dict[str, str]:
        """Authorization header for `token` (default: the admin token)."""
        return {"Authorization": f"Bearer {token or self.admin_token}"}


@dataclass(frozen=True)
class StorageBackend:
    """A database the storage tests run on, and a look at its tables from outside."""

    name: str  # "sqlite" or "postgresql"
    location: str  # what registry.toml's storage.database would say
    count: Callable[[str], int]  # the rows of a table, as another process sees them
    execute: Callable[[str], None]  # one statement from outside the storage

    def storage(self) -> Storage:
        """Another (unopened) storage on the same database."""
        return open_storage(self.location)


def _sqlite_count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608


def _sqlite_execute(path: Path, statement: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(statement)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageBackend]:
    """Each storage test runs on a SQLite file and on a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        path = tmp_path / "registry.db"
        yield StorageBackend(
            "sqlite",
            str(path),
            lambda table: _sqlite_count(path, table),
            lambda statement: _sqlite_execute(path, statement),
        )
        return
    request.getfixturevalue("postgres")  # fails with the reason when the server is down
    with new_schema() as schema:
        yield StorageBackend("postgresql", schema.url, schema.count, schema.execute)


@pytest.fixture
async def storage(backend: StorageBackend) -> AsyncIterator[Storage]:
    """An open storage on the backend's database."""
    opened = backend.storage()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def registry_home(tmp_path: Path) -> InitResult:
    """A freshly initialised registry home."""
    return await init_home(tmp_path / "registry-home")


@pytest.fixture
async def api(registry_home: InitResult) -> AsyncIterator[Api]:
    """The registry API (without MQTT) over a real socket."""
    from model_registry.api.app import create_app
    from model_registry.server import make_context

    config = load_config(registry_home.home)
    storage = open_storage(config.database_location)
    await storage.open()
    ctx = make_context(config, storage)
    client = TestClient(TestServer(create_app(ctx)))
    await client.start_server()
    try:
        yield Api(client, ctx, registry_home.admin_token)
    finally:
        await client.close()
        await storage.close()


@pytest.fixture
async def bounded_api(api: Api) -> AsyncIterator[Api]:
    """The same registry, served with small upload and dataset limits, and device d1."""
    from model_registry.services.devices import add_device

    limits = ApiConfig(max_upload_mb=UPLOAD_MB, max_dataset_mb=DATASET_MB)
    config = dataclasses.replace(api.ctx.config, api=limits)
    ctx = dataclasses.replace(api.ctx, config=config)
    await add_device(ctx, "d1", group="lab")
    client = TestClient(TestServer(create_app(ctx)))
    await client.start_server()
    yield Api(client, ctx, api.admin_token)
    await client.close()
