"""Passes that must run on one registry at a time, however many share the database.

Re-signing what is about to expire, clearing unused chunks and pruning device messages would
race, or be done twice, if every replica on one PostgreSQL ran them. Each loop asks the storage
for its duty's lease before every pass (`Storage.acquire_duty`). With SQLite the one `serve`
always holds it. On PostgreSQL one replica does; the others try again every `retry_s`, so when
the holder stops, is killed or loses its connection, another takes over within seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from model_registry.storage import Storage

log = logging.getLogger(__name__)

STANDBY_RETRY_S = 5.0  # how often a replica without the lease asks for it again


async def duty_loop(
    storage: Storage,
    name: str,
    run_pass: Callable[[], Awaitable[None]],
    interval_s: float,
    retry_s: float = STANDBY_RETRY_S,
) -> None:
    """Run `run_pass` every `interval_s` while this registry holds duty `name`; until cancelled."""
    holding = False
    while True:
        wait = min(retry_s, interval_s)
        try:
            held = await storage.acquire_duty(name)
            if held != holding:  # said once per change: a standby asks every few seconds
                log.info("%s: %s", name, "this registry runs it now" if held else "no longer")
                holding = held
            if held:
                await run_pass()
                wait = interval_s
        except asyncio.CancelledError:
            raise
        except Exception:  # one failed pass must not end the duty for good
            log.exception("%s pass failed; retrying at the next interval", name)
            wait = interval_s
        await asyncio.sleep(wait)
