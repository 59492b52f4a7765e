"""`SQLiteStorage`: the registry's records in one SQLite file, off the event loop.

One connection lives on one worker thread (a single-thread executor) and every method hands a
small synchronous function to it, so the loop only schedules and the calls are serialized in the
order they were made. If an awaiting task is cancelled, its function still runs to the end: a
write is committed or rolled back whole, never abandoned half-way.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from model_registry.errors import ConfigError, InvalidInputError
from model_registry.storage import _catalog, _fleet, _tokens
from model_registry.storage.base import (
    DeploymentRecord,
    DeviceMessageRecord,
    DeviceRecord,
    DeviceReport,
    ModelSummary,
    ReleaseRecord,
    TokenRecord,
)
from model_registry.storage.migrations import migrate

BUSY_TIMEOUT_MS = 5000  # how long a write waits for another process's write lock
PRUNE_DEVICES_PER_TRANSACTION = 100
_MESSAGE_TABLES: dict[str, _fleet.MessageTable] = {
    "events": "device_events",
    "telemetry": "telemetry",
}
_P = ParamSpec("_P")
_T = TypeVar("_T")


def connect(path: Path) -> sqlite3.Connection:
    """Open the database file, set it up and migrate it; raises ConfigError if unusable."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as e:
        raise ConfigError(f"{path}: cannot open the database: {e}") from e
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        # WAL lets readers in other processes (a CLI, a backup) run while the registry writes.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)
    except ConfigError as e:
        conn.close()
        raise ConfigError(f"{path}: {e}") from e
    except sqlite3.DatabaseError as e:
        conn.close()
        raise ConfigError(f"{path}: not a usable registry database: {e}") from e
    except BaseException:
        conn.close()
        raise
    return conn


class SQLiteStorage:
    """`Storage` on one SQLite file, with every call run on one worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect and apply pending schema migrations; a second call does nothing."""
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-storage")
        try:
            loop = asyncio.get_running_loop()
            self._conn = await loop.run_in_executor(executor, connect, self.path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    async def close(self) -> None:
        """Let queued calls finish, then close the connection and stop the thread."""
        executor, conn = self._executor, self._conn
        if executor is None or conn is None:
            return
        self._executor = self._conn = None  # later calls fail at once instead of queueing
        try:
            # Queued behind every call already made, so those all finish first.
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        finally:
            executor.shutdown(wait=False)  # the queue is empty: the thread exits by itself

    async def _call(
        self,
        function: Callable[Concatenate[sqlite3.Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """Run `function(conn, ...)` on the worker thread and return its result."""
        if self._executor is None or self._conn is None:
            raise RuntimeError(f"SQLiteStorage({self.path}) is not open")
        job = functools.partial(function, self._conn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    # roots

    async def add_root(self, version: int, envelope: bytes) -> None:
        """Store root `version`; raises ConflictError if it is stored already."""
        await self._call(_catalog.add_root, version, envelope)

    async def roots(self) -> list[tuple[int, bytes]]:
        """Return every root as (version, envelope), oldest first."""
        return await self._call(_catalog.roots)

    # models and releases

    async def add_release(self, release: ReleaseRecord) -> None:
        """Store a release; raises ConflictError if (model, version) exists."""
        await self._call(_catalog.add_release, release)

    async def replace_release_envelope(
        self, model: str, version: int, envelope: bytes, expires: datetime
    ) -> None:
        """Swap in a re-signed envelope of an existing release; raises NotFoundError."""
        await self._call(_catalog.replace_release_envelope, model, version, envelope, expires)

    async def get_release(self, model: str, version: int) -> ReleaseRecord:
        """Return one release; raises NotFoundError."""
        return await self._call(_catalog.get_release, model, version)

    async def releases(self, model: str) -> list[ReleaseRecord]:
        """Return a model's releases, oldest first; raises NotFoundError for unknown models."""
        return await self._call(_catalog.releases, model)

    async def latest_version(self, model: str) -> int:
        """Return the newest version of `model`, or 0 when it has none."""
        return await self._call(_catalog.latest_version, model)

    async def models(self) -> list[ModelSummary]:
        """Return every model, by name."""
        return await self._call(_catalog.models)

    # devices

    async def add_device(self, device: DeviceRecord) -> None:
        """Store a new device; raises ConflictError if the id exists."""
        await self._call(_fleet.add_device, device)

    async def get_device(self, device_id: str) -> DeviceRecord:
        """Return one device; raises NotFoundError."""
        return await self._call(_fleet.get_device, device_id)

    async def devices(self, group: str | None = None) -> list[DeviceRecord]:
        """Return devices, all or of one group, by id."""
        return await self._call(_fleet.devices, group)

    async def set_assignment(
        self, device_id: str, seq: int, envelope: bytes, assigned: dict[str, dict[str, Any]]
    ) -> None:
        """Record a device's new assignment; raises ConflictError unless `seq` grows."""
        await self._call(_fleet.set_assignment, device_id, seq, envelope, assigned)

    async def record_state(
        self, device_id: str, state: dict[str, Any], online: bool, seen: datetime
    ) -> None:
        """Store a device's latest state message; raises NotFoundError."""
        await self._call(_fleet.record_state, device_id, state, online, seen)

    async def set_device_group(self, device_id: str, group: str) -> DeviceRecord:
        """Move a device to `group` and return it; raises NotFoundError."""
        return await self._call(_fleet.set_device_group, device_id, group)

    async def remove_device(self, device_id: str) -> None:
        """Delete a device with its events, telemetry and deployment targets; NotFoundError."""
        await self._call(_fleet.remove_device, device_id)

    # deployments

    async def add_deployment(self, deployment: DeploymentRecord) -> int:
        """Store a deployment and its targets atomically and return its new id."""
        return await self._call(_catalog.add_deployment, deployment)

    async def get_deployment(self, deployment_id: int) -> DeploymentRecord:
        """Return one deployment; raises NotFoundError."""
        return await self._call(_catalog.get_deployment, deployment_id)

    async def deployments(self, model: str | None = None) -> list[DeploymentRecord]:
        """Return deployments, newest first, all or of one model."""
        return await self._call(_catalog.deployments, model)

    async def deployment_by_key(self, idempotency_key: str) -> DeploymentRecord | None:
        """Return the deployment made with this Idempotency-Key, or None."""
        return await self._call(_catalog.deployment_by_key, idempotency_key)

    # device messages

    async def add_event(self, device_id: str, received: datetime, body: dict[str, Any]) -> None:
        """Store one device event; raises NotFoundError for an unknown device."""
        await self._call(_fleet.add_message, "device_events", device_id, received, body)

    async def events(
        self, device_id: str, limit: int = 50, since: datetime | None = None
    ) -> list[DeviceMessageRecord]:
        """Return a device's events received at or after `since`, newest first."""
        return await self._call(_fleet.messages, "device_events", device_id, limit, since)

    async def deployment_events(self, deployment_id: int) -> list[DeviceMessageRecord]:
        """Return the events of a deployment's targets since its creation, oldest first."""
        return await self._call(_fleet.deployment_events, deployment_id)

    async def add_telemetry(self, device_id: str, received: datetime, body: dict[str, Any]) -> None:
        """Store one telemetry report; raises NotFoundError for an unknown device."""
        await self._call(_fleet.add_message, "telemetry", device_id, received, body)

    async def telemetry(self, device_id: str, limit: int = 100) -> list[DeviceMessageRecord]:
        """Return a device's telemetry reports, newest first."""
        return await self._call(_fleet.messages, "telemetry", device_id, limit, None)

    async def prune_telemetry(self, older_than: datetime) -> int:
        """Delete telemetry received before `older_than`; return how many rows went."""
        return await self._call(_fleet.prune_telemetry, older_than)

    async def prune_messages(self, kind: str, older_than: datetime, keep_per_device: int) -> int:
        """Delete old events or telemetry, and all but each device's newest; return the count."""
        table = _MESSAGE_TABLES.get(kind)
        if table is None:
            raise InvalidInputError(f"kind must be 'events' or 'telemetry', not {kind!r}")
        devices = await self._call(_fleet.device_ids)
        deleted = 0
        # A transaction per slice of devices, so the ingest's writes get their turn in between.
        for start in range(0, len(devices), PRUNE_DEVICES_PER_TRANSACTION):
            chunk = devices[start : start + PRUNE_DEVICES_PER_TRANSACTION]
            deleted += await self._call(
                _fleet.prune_messages, table, chunk, older_than, keep_per_device
            )
        return deleted

    async def add_device_reports(self, reports: Sequence[DeviceReport]) -> list[str]:
        """Apply reports in order, in one transaction; return each one's outcome."""
        return await self._call(_fleet.add_reports, reports)

    # tokens

    async def add_token(self, name: str, role: str, token_hash: str, created: datetime) -> int:
        """Store a token hash and return its id; raises ConflictError for a stored hash."""
        return await self._call(_tokens.add_token, name, role, token_hash, created)

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        """Return the token with this hash, or None."""
        return await self._call(_tokens.find_token, token_hash)

    async def tokens(self) -> list[TokenRecord]:
        """Return every token, by id."""
        return await self._call(_tokens.tokens)

    async def touch_token(self, token_id: int, used: datetime) -> None:
        """Record that the token was used at `used`."""
        await self._call(_tokens.touch_token, token_id, used)

    async def remove_token(self, token_id: int) -> TokenRecord:
        """Delete a token and return it; NotFoundError, or ConflictError for the last admin."""
        return await self._call(_tokens.remove_token, token_id)
