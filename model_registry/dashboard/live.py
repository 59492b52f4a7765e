"""Live updates for the dashboard: one Server-Sent Events stream per open page.

A page does not poll. While at least one stream is open, one task per registry process looks
at the database every POLL_S seconds (`snapshot`: a digest of every device's liveness and
assignment, of the models, the deployments and the rollouts) and, when something changed, sends each
stream a `change` event naming the parts that changed; the page then fetches what it shows
again. Looking at the database rather than at this process's ingest means a page follows the
fleet whichever replica stores the messages.

Streams are bounded as any input is: at most MAX_STREAMS at once (503 beyond), a comment
every HEARTBEAT_S so proxies and the browser see the link alive, each write abandoned after
WRITE_TIMEOUT_S (a reader that stopped reading is dropped) and every stream closed after
MAX_STREAM_S; the browser's EventSource then reconnects by itself, so an idle tab costs a
reconnection now and then rather than a stream forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from typing import Any

from aiohttp import web

from model_registry.api.auth import require
from model_registry.dashboard.headers import SECURITY_HEADERS
from model_registry.errors import UnavailableError
from model_registry.services.context import RegistryContext

log = logging.getLogger(__name__)

MAX_STREAMS = 64
POLL_S = 2.0
HEARTBEAT_S = 15.0
WRITE_TIMEOUT_S = 10.0
MAX_STREAM_S = 600.0
RETRY_MS = 2000  # how long the browser waits before it reconnects


async def snapshot(ctx: RegistryContext) -> dict[str, str]:
    """A digest of each part of what the dashboard shows; a part changed when its digest did."""
    storage = ctx.storage
    fleet = hashlib.sha256()
    for d in await storage.device_liveness():
        last_seen = d.last_seen.isoformat() if d.last_seen else ""
        fleet.update(f"{d.device_id}\0{d.group}\0{d.online}\0{last_seen}\n".encode())
    models = hashlib.sha256()
    for m in await storage.models():
        models.update(f"{m.name}\0{m.latest_version}\n".encode())
    deployments = await storage.deployments()
    newest = str(deployments[0].deployment_id) if deployments else ""
    rollouts = hashlib.sha256()
    for r in await storage.rollouts():
        rollouts.update(f"{r.rollout_id}\0{r.state}\0{r.updated.isoformat()}\n".encode())
    return {
        "fleet": fleet.hexdigest()[:16],
        "models": models.hexdigest()[:16],
        "deployments": newest,
        "rollouts": rollouts.hexdigest()[:16],
    }


class LiveHub:
    """The one watcher of this process and the streams it tells."""

    def __init__(self, ctx: RegistryContext) -> None:
        self._ctx = ctx
        self._streams = 0
        self._changed = asyncio.Condition()
        self._snapshot: dict[str, str] = {}
        self._generation = 0
        self._watcher: asyncio.Task[None] | None = None

    @property
    def streams(self) -> int:
        """How many streams are open."""
        return self._streams

    def join(self) -> None:
        """Count a new stream in, starting the watcher; UnavailableError when full."""
        if self._streams >= MAX_STREAMS:
            raise UnavailableError(
                f"the dashboard already has {MAX_STREAMS} live streams open; try again later"
            )
        self._streams += 1
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="dashboard live watcher")

    def leave(self) -> None:
        """Count a stream out; the watcher stops with the last one."""
        self._streams -= 1
        if self._streams == 0 and self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def wait(self, generation: int, wait_s: float) -> tuple[int, dict[str, str]]:
        """Wait until the snapshot is newer than `generation` (or `wait_s`); return it."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._generation > generation), wait_s
                )
            return self._generation, dict(self._snapshot)

    async def close(self) -> None:
        """Stop the watcher (at shutdown)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def _watch(self) -> None:
        while True:
            try:
                current = await snapshot(self._ctx)
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup must not end the dashboard's updates
                log.warning("dashboard: could not read the fleet for live updates", exc_info=True)
                current = self._snapshot
            if current != self._snapshot:
                async with self._changed:
                    self._snapshot = current
                    self._generation += 1
                    self._changed.notify_all()
            await asyncio.sleep(POLL_S)


HUB_KEY = web.AppKey("dashboard_live_hub", LiveHub)


@require("viewer")
async def events(request: web.Request) -> web.StreamResponse:
    """GET /ui/events: `change` events as the fleet, models or deployments change."""
    hub = request.app[HUB_KEY]
    hub.join()
    try:
        return await _stream(request, hub)
    finally:
        hub.leave()


async def _stream(request: web.Request, hub: LiveHub) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            **SECURITY_HEADERS,
            "Content-Type": "text/event-stream",
            "X-Accel-Buffering": "no",  # nginx would hold the events back otherwise
        }
    )
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    ends = loop.time() + MAX_STREAM_S
    generation, last = 0, dict[str, str]()
    alive = await _send(response, f"retry: {RETRY_MS}\n\n")
    while alive and (left := ends - loop.time()) > 0:
        generation, current = await hub.wait(generation, min(HEARTBEAT_S, left))
        changed = sorted(k for k in current if current[k] != last.get(k))
        if changed:
            last = current
            alive = await _send(response, _event("change", {"changed": changed, "digest": current}))
        else:
            alive = await _send(response, ": heartbeat\n\n")
    return response


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _send(response: web.StreamResponse, text: str) -> bool:
    """Write, or say the stream is over: its reader left or does not take the bytes in time."""
    try:
        await asyncio.wait_for(response.write(text.encode()), WRITE_TIMEOUT_S)
    except (TimeoutError, ConnectionError):
        return False
    return True
