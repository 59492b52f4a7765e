"""Duties run on one registry at a time: leases on a shared PostgreSQL schema, always on SQLite."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from model_registry.services.duties import duty_loop
from model_registry.storage import PostgresStorage, SQLiteStorage, Storage
from tests.support.postgres import Schema, connect, new_schema

POLL_S = 0.05
POLLS = 400  # 20 s at most before an expected change counts as never happening


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `check` until it is true; fail naming `what` if it never becomes so."""
    for _ in range(POLLS):
        if await check():
            return
        await asyncio.sleep(POLL_S)
    pytest.fail(f"never happened: {what}")


@pytest.fixture
def schema(postgres: str) -> Iterator[Schema]:
    with new_schema() as created:
        yield created


@pytest.fixture
async def replicas(schema: Schema) -> AsyncIterator[tuple[PostgresStorage, PostgresStorage]]:
    first, second = PostgresStorage(schema.url), PostgresStorage(schema.url)
    await first.open()
    await second.open()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_one_storage_holds_a_duty_until_it_closes(
    replicas: tuple[PostgresStorage, PostgresStorage],
) -> None:
    first, second = replicas
    assert await first.acquire_duty("maintenance") is True
    assert await second.acquire_duty("maintenance") is False
    assert await first.acquire_duty("maintenance") is True  # held, not taken twice
    assert await second.acquire_duty("retention") is True  # each duty has its own lease
    assert await first.acquire_duty("retention") is False

    await first.close()

    await eventually(lambda: second.acquire_duty("maintenance"), "the second took over")
    assert await second.acquire_duty("retention") is True


# The sessions holding a duty's advisory lock: its 64-bit key is split in classid and objid.
LEASE_HOLDERS = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 1 AND granted
  AND ((classid::bigint << 32) | objid::bigint)
      = hashtextextended('model-registry duty ' || %s || ' ' || %s, 0)
"""


async def test_a_lost_connection_hands_the_duty_over(
    replicas: tuple[PostgresStorage, PostgresStorage], schema: Schema
) -> None:
    first, second = replicas
    assert await first.acquire_duty("maintenance") is True
    with connect() as admin:  # as when the holder's host drops off the network
        holders = admin.execute(LEASE_HOLDERS, (schema.name, "maintenance")).fetchall()
        assert len(holders) == 1  # the lease is one advisory lock, named for schema and duty
        admin.execute("SELECT pg_terminate_backend(%s)", holders[0])

    await eventually(lambda: second.acquire_duty("maintenance"), "the second took over")
    assert await first.acquire_duty("maintenance") is False  # it noticed, and did not take it


async def test_leases_of_other_schemas_do_not_interfere(
    replicas: tuple[PostgresStorage, PostgresStorage],
) -> None:
    first, _ = replicas
    with new_schema() as other_schema:
        other = PostgresStorage(other_schema.url)
        await other.open()
        try:
            assert await first.acquire_duty("maintenance") is True
            assert await other.acquire_duty("maintenance") is True  # another registry
        finally:
            await other.close()


HOLDER = """
import asyncio, sys
from model_registry.storage import PostgresStorage

async def main():
    storage = PostgresStorage(sys.argv[1])
    await storage.open()
    print(await storage.acquire_duty("maintenance"), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_holder_releases_the_duty(schema: Schema) -> None:
    holder = subprocess.Popen(  # noqa: ASYNC220 - a process to kill -9, read line by line
        [sys.executable, "-c", HOLDER, schema.url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.to_thread(holder.stdout.readline)
        assert line.strip() == "True"
        async with PostgresStorage(schema.url) as standby:
            assert await standby.acquire_duty("maintenance") is False
            os.kill(holder.pid, signal.SIGKILL)
            await eventually(lambda: standby.acquire_duty("maintenance"), "took over from kill -9")
    finally:
        holder.kill()
        holder.wait()


async def test_duty_loops_run_passes_on_one_storage_and_move_when_it_stops(
    replicas: tuple[PostgresStorage, PostgresStorage],
) -> None:
    passes: dict[str, int] = {"first": 0, "second": 0}

    def counter(name: str) -> Callable[[], Awaitable[None]]:
        async def one_pass() -> None:
            passes[name] += 1

        return one_pass

    loops = {
        name: asyncio.create_task(duty_loop(storage, "retention", counter(name), 0.02, 0.02))
        for name, storage in zip(passes, replicas, strict=True)
    }
    try:

        async def many_passes() -> bool:
            return max(passes.values()) >= 10

        await eventually(many_passes, "ten passes")
        holder = max(passes, key=lambda name: passes[name])
        standby = "second" if holder == "first" else "first"
        assert passes[standby] == 0, passes
        loops[holder].cancel()
        await asyncio.gather(loops[holder], return_exceptions=True)
        await dict(zip(passes, replicas, strict=True))[holder].close()

        async def standby_ran() -> bool:
            return passes[standby] > 0

        await eventually(standby_ran, "the standby's first pass")
    finally:
        for loop in loops.values():
            loop.cancel()
        await asyncio.gather(*loops.values(), return_exceptions=True)


async def test_sqlite_always_holds_its_duties(tmp_path: Path) -> None:
    storage: Storage = SQLiteStorage(tmp_path / "registry.db")
    with pytest.raises(RuntimeError, match="not open"):
        await storage.acquire_duty("maintenance")
    await storage.open()
    try:
        assert await storage.acquire_duty("maintenance") is True
        assert await storage.acquire_duty("maintenance") is True
    finally:
        await storage.close()
