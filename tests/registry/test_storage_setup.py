"""Opening and closing both storages, their migrations, and `open_storage`'s locations."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from model_registry.errors import ConfigError
from model_registry.storage import PostgresStorage, SQLiteStorage, migrations, open_storage
from model_registry.storage import postgres as pg
from model_registry.storage._db import READ
from model_registry.storage.migrations import DIALECT_TYPES, MIGRATIONS, Migration, render
from model_registry.storage.sqlite import migrate, run_steps
from tests.registry.conftest import StorageBackend
from tests.support.postgres import (
    SCHEMA_PREFIX,
    Schema,
    connect,
    drop_stale_schemas,
    new_schema,
    schema_url,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


async def test_calls_outside_open_and_close_fail_clearly(backend: StorageBackend) -> None:
    storage = backend.storage()
    with pytest.raises(RuntimeError, match="not open"):
        await storage.roots()
    await storage.open()
    await storage.open()  # a second open is harmless
    await storage.close()
    await storage.close()
    with pytest.raises(RuntimeError, match="not open"):
        await storage.roots()


async def test_sqlite_database_settings(db_path: Path) -> None:
    async with SQLiteStorage(db_path):
        pass
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # stored in the file


# migrations


def test_migrations_are_numbered_in_order_and_render_for_both_dialects() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    for dialect in DIALECT_TYPES:
        for migration in MIGRATIONS:
            assert all("{" not in render(s, dialect) for s in migration.statements)


async def test_reopening_keeps_data_and_applies_migrations_once(backend: StorageBackend) -> None:
    for _ in range(2):
        storage = backend.storage()
        await storage.open()
        if not await storage.roots():
            await storage.add_root(1, b"root")
        assert await storage.roots() == [(1, b"root")]
        await storage.close()
    assert backend.count("schema_version") == len(MIGRATIONS)


async def test_a_database_from_a_newer_registry_is_refused(backend: StorageBackend) -> None:
    storage = backend.storage()
    await storage.open()
    await storage.close()
    backend.execute("INSERT INTO schema_version VALUES (99, 'from the future', 'x')")
    newest = len(MIGRATIONS)
    where = r"registry\.db" if backend.name == "sqlite" else "postgresql://"
    with pytest.raises(ConfigError, match=rf"{where}.*: .*schema version 99 .* up to {newest}"):
        await backend.storage().open()


EXPECTED_TABLES = {
    "schema_version",
    "roots",
    "models",
    "releases",
    "devices",
    "deployments",
    "deployment_targets",
    "device_events",
    "telemetry",
    "tokens",
    "version_points",
    "rollouts",
    "rollout_decisions",
    "drift_records",
    "experiments",
    "resource_points",
    "history_marks",
}


def test_migrate_is_idempotent(db_path: Path) -> None:
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        assert migrate(conn) == len(MIGRATIONS)
        assert migrate(conn) == len(MIGRATIONS)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables - {"sqlite_sequence"} == EXPECTED_TABLES
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == len(MIGRATIONS)


def test_a_new_migration_applies_to_an_existing_database_keeping_data(db_path: Path) -> None:
    extra = Migration(len(MIGRATIONS) + 1, "add notes", ("ALTER TABLE roots ADD COLUMN note TEXT",))
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        migrate(conn)
        conn.execute("INSERT INTO roots (version, envelope) VALUES (1, x'00')")
        assert migrate(conn, (*MIGRATIONS, extra)) == extra.version
        assert conn.execute("SELECT version, note FROM roots").fetchall() == [(1, None)]


def test_a_failing_migration_is_rolled_back_whole(db_path: Path) -> None:
    statements = ("CREATE TABLE half_done (x INTEGER)", "NOT SQL AT ALL")
    broken = Migration(len(MIGRATIONS) + 1, "broken", statements)
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        with pytest.raises(sqlite3.OperationalError):
            migrate(conn, (*MIGRATIONS, broken))
        assert run_steps(conn, READ, migrations.current_version) == len(MIGRATIONS)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "half_done" not in tables


def test_a_misnumbered_migration_list_is_refused(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn, pytest.raises(ValueError, match="in order"):
        migrate(conn, (Migration(2, "skips one", ()),))


@pytest.fixture
def not_a_database(db_path: Path) -> Path:
    db_path.write_bytes(b"this is not sqlite" * 100)
    return db_path


async def test_a_file_that_is_not_a_database_is_refused(not_a_database: Path) -> None:
    with pytest.raises(ConfigError, match="not a usable registry database"):
        await SQLiteStorage(not_a_database).open()


async def test_a_database_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open"):
        await SQLiteStorage(tmp_path / "missing" / "registry.db").open()


# open_storage


async def test_open_storage_understands_sqlite_urls_and_paths(db_path: Path) -> None:
    for location in (f"sqlite://{db_path}", str(db_path), db_path):
        storage = open_storage(location)
        assert isinstance(storage, SQLiteStorage)
        assert storage.path == db_path
    opened = open_storage(f"sqlite://{db_path}")
    await opened.open()
    await opened.add_root(1, b"r")
    await opened.close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM roots").fetchone()[0] == 1


def test_open_storage_understands_postgresql_urls() -> None:
    for location in ("postgresql://registry@db.example/registry", "postgres://db.example/r"):
        storage = open_storage(location)
        assert isinstance(storage, PostgresStorage)
        assert storage.url == location
    secret = open_storage("postgresql://registry:hunter2@db.example/registry")
    assert "hunter2" not in repr(secret)


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("postgresql://registry@127.0.0.1/test?nosuch=1", 'not a valid URL: .*"nosuch"'),
        ("postgresql://registry:hunter2@[::1/test", r"^(?!.*hunter2).*not a valid URL"),
        ("sqlite://relative.db", "absolute path"),
        ("mysql://host/db", "neither a SQLite path nor a known URL"),
        ("", "empty"),
    ],
)
def test_open_storage_refusals(location: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_storage(location)


# migrations on PostgreSQL: the same list, transactional DDL, one registry at a time


@pytest.fixture
def schema(postgres: str) -> Iterator[Schema]:
    with new_schema() as created:
        yield created


async def test_postgresql_applies_a_new_migration_keeping_data(schema: Schema) -> None:
    extra = Migration(len(MIGRATIONS) + 1, "add notes", ("ALTER TABLE roots ADD COLUMN note TEXT",))
    conn = await pg.connect(schema.url)
    try:
        assert await pg.migrate(conn) == len(MIGRATIONS)
        await conn.execute("INSERT INTO roots (version, envelope) VALUES (1, '\\x00')")
        assert await pg.migrate(conn, (*MIGRATIONS, extra)) == extra.version
        rows = await (await conn.execute("SELECT version, note FROM roots")).fetchall()
        assert rows == [(1, None)]
    finally:
        await conn.close()


async def test_postgresql_rolls_a_failing_migration_back_whole(schema: Schema) -> None:
    statements = ("CREATE TABLE half_done (x INTEGER)", "NOT SQL AT ALL")
    broken = Migration(len(MIGRATIONS) + 1, "broken", statements)
    conn = await pg.connect(schema.url)
    try:
        with pytest.raises(psycopg.errors.SyntaxError):
            await pg.migrate(conn, (*MIGRATIONS, broken))
        assert await pg.migrate(conn) == len(MIGRATIONS)
        found = await (await conn.execute("SELECT to_regclass('half_done')")).fetchone()
        assert found == (None,)
    finally:
        await conn.close()


async def test_registries_opening_together_migrate_once(schema: Schema) -> None:
    storages = [PostgresStorage(schema.url) for _ in range(4)]
    await asyncio.gather(*(storage.open() for storage in storages))
    await asyncio.gather(*(storage.close() for storage in storages))
    assert schema.count("schema_version") == len(MIGRATIONS)


async def test_a_schema_that_does_not_exist_is_a_clear_error(postgres: str) -> None:
    storage = PostgresStorage(schema_url("registry_no_such_schema"))
    with pytest.raises(
        ConfigError,
        match=r"not a usable registry database: .*search_path names does not exist",
    ):
        await storage.open()


def test_schemas_a_killed_test_run_left_are_dropped_after_an_hour(postgres: str) -> None:
    now = int(time.time())
    stale, recent = (f"{SCHEMA_PREFIX}999999_{now - age}_1" for age in (7200, 60))
    with connect() as conn:
        for name in (stale, recent):
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        try:
            drop_stale_schemas(conn, now=now)
            left = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", ([stale, recent],)
            ).fetchall()
            assert left == [(recent,)]  # a run that may still be going keeps its schema
        finally:
            for name in (stale, recent):
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                )
