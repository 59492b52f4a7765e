"""Both storages: API tokens found by hash and refused when malformed, and concurrent writes."""

from __future__ import annotations

import asyncio

import pytest

from model_registry.errors import ConflictError, InvalidInputError
from model_registry.storage import (
    ROLES,
    Storage,
)
from tests.support.storage_records import T0, device

# tokens


async def test_tokens_are_found_by_hash(storage: Storage) -> None:
    ids = [await storage.add_token(f"t-{role}", role, f"hash-{role}", T0) for role in ROLES]
    assert len(set(ids)) == len(ROLES)
    found = await storage.find_token("hash-publisher")
    assert found is not None
    assert (found.token_id, found.name, found.role, found.created) == (
        ids[1],
        "t-publisher",
        "publisher",
        T0,
    )
    assert await storage.find_token("unknown") is None


async def test_token_refusals(storage: Storage) -> None:
    await storage.add_token("ci", "viewer", "secret-hash", T0)
    with pytest.raises(ConflictError) as caught:
        await storage.add_token("other", "admin", "secret-hash", T0)
    assert "secret-hash" not in str(caught.value)
    with pytest.raises(InvalidInputError, match="'root' is not one of"):
        await storage.add_token("x", "root", "other-hash", T0)
    found = await storage.find_token("secret-hash")
    assert found is not None
    assert found.role == "viewer"


# concurrency and lifecycle


async def test_a_hundred_concurrent_writes(storage: Storage) -> None:
    await asyncio.gather(*(storage.add_device(device(f"d{i:03}")) for i in range(100)))
    await asyncio.gather(
        *(storage.add_telemetry(f"d{i:03}", T0, {"i": i}) for i in range(100)),
        *(storage.get_device(f"d{i:03}") for i in range(100)),
    )
    assert len(await storage.devices()) == 100
    assert (await storage.telemetry("d042"))[0].body == {"i": 42}


async def test_concurrent_duplicates_store_exactly_one(storage: Storage) -> None:
    results = await asyncio.gather(
        *(storage.add_device(device(group=f"g{i}")) for i in range(20)), return_exceptions=True
    )
    assert results[0] is None
    assert all(isinstance(r, ConflictError) for r in results[1:])
    assert (await storage.get_device("d1")).group == "g0"
