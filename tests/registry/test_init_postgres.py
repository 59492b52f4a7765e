"""`init` on a PostgreSQL URL: records on the server, checked before anything is written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from model_registry.config import load_config
from model_registry.errors import ConfigError, ConflictError
from model_registry.home import init_home
from model_registry.storage import PostgresStorage
from tests.support.postgres import Schema, new_schema, schema_url, server_url


@pytest.fixture
def schema(postgres: str) -> Iterator[Schema]:
    with new_schema() as created:
        yield created


async def test_init_stores_root_and_token_on_the_server(tmp_path: Path, schema: Schema) -> None:
    result = await init_home(tmp_path / "home", database=schema.url)

    config = load_config(result.home)
    assert config.database_location == schema.url
    assert not (result.home / "registry.db").exists()
    async with PostgresStorage(schema.url) as storage:
        assert [version for version, _ in await storage.roots()] == [1]
        assert [t.role for t in await storage.tokens()] == ["admin"]
    assert (result.home / "registry.toml").stat().st_mode & 0o777 == 0o644


async def test_init_refuses_a_database_holding_a_registry(tmp_path: Path, schema: Schema) -> None:
    await init_home(tmp_path / "first", database=schema.url)

    with pytest.raises(ConflictError, match=r"already holds a registry \(root v1\)"):
        await init_home(tmp_path / "second", database=schema.url)
    assert not (tmp_path / "second").exists()


async def test_init_on_an_unreachable_server_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1:9/test: cannot connect: .*refused"):
        await init_home(tmp_path / "home", database="postgresql://postgres@127.0.0.1:9/test")
    assert not (tmp_path / "home").exists()


async def test_a_url_with_a_password_makes_registry_toml_private(
    tmp_path: Path, schema: Schema
) -> None:
    base = server_url().replace("postgresql://postgres@", "postgresql://postgres:hunter2@")
    assert "hunter2" in base  # the test server's URL has the expected shape
    result = await init_home(tmp_path / "home", database=schema_url(schema.name, base))
    assert (result.home / "registry.toml").stat().st_mode & 0o777 == 0o600

    with pytest.raises(ConflictError) as refused:
        await init_home(tmp_path / "again", database=schema_url(schema.name, base))
    assert "hunter2" not in str(refused.value)
    assert "postgres:***@" in str(refused.value)
