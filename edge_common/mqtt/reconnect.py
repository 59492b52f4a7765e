"""The reconnect policy of both services: jittered exponential backoff around one `MqttClient`
at a time.

This is aiomqtt's recipe (`docs/reconnection.md`): paho never reconnects by itself; a loop opens
a fresh connection, runs the caller's `on_connect`, dispatches messages until the connection
ends, sleeps a jittered delay and starts over, until it is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn

from edge_common.mqtt.connection import Message, MqttClient
from edge_common.mqtt.errors import BrokerError, MqttDisconnectedError

log = logging.getLogger(__name__)
HandlerError = Callable[[Message, Exception], Awaitable[None]]  # told of a handler's failure


class Backoff:
    """Jittered exponential delays for a reconnect loop, each between min_s and max_s.

    The n-th wait in a row is uniform in [min_s, min(min_s * 2**n, max_s)]: never shorter than
    min_s (the documented `reconnect_min_s`), never longer than max_s, and spread out, so
    devices that lost the same broker do not come back in lockstep.
    """

    def __init__(self, min_s: float, max_s: float, *, rng: random.Random | None = None) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"backoff needs 0 < min_s <= max_s, got {min_s} and {max_s}")
        self.min_s = min_s  # the floor of every delay
        self.max_s = max_s  # the ceiling never grows past this
        # Jitter only spreads a fleet's reconnects out; it protects no secret.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._ceiling = self._first_ceiling()

    def _first_ceiling(self) -> float:
        return min(self.min_s * 2, self.max_s)

    def next_delay(self) -> float:
        """Return a delay uniform in [min_s, ceiling]; the ceiling doubles up to max_s."""
        # uniform() may round a hair past its bounds; the documented bounds are hard.
        delay = min(max(self._rng.uniform(self.min_s, self._ceiling), self.min_s), self.max_s)
        self._ceiling = min(self._ceiling * 2, self.max_s)
        return delay

    def reset(self) -> None:
        """Start again from the first ceiling, after a connection that worked."""
        self._ceiling = self._first_ceiling()


async def follow(
    connect: Callable[[], MqttClient],
    *,
    where: str | Callable[[], str],
    who: str,
    on_connect: Callable[[MqttClient], Awaitable[None]],
    on_message: Callable[[Message], Awaitable[None]],
    backoff: Backoff,
    on_disconnect: Callable[[Exception], None] | None = None,
    on_handler_error: HandlerError | None = None,
) -> NoReturn:
    """Stay connected until cancelled: connect, on_connect, dispatch messages, back off, repeat.

    `connect` makes each new (unopened) connection; `where` (the broker, or a callable naming
    the one `connect` uses next) and `who` (the login) are for the log. `on_connect` runs on
    every connection (publish state, subscribe: a restarted broker has forgotten the session).
    Messages go to `on_message` one at a time, in order. A BrokerError from either ends the
    connection like a drop does. Any other exception from `on_message` is logged with its
    traceback, handed to `on_handler_error` and the next message handled: the connection stays
    up (leaving it would send a clean DISCONNECT, which discards the will). Any other exception
    from `on_connect` ends that connection and the loop reconnects. `on_disconnect` hears why
    each attempt or connection ended, before the wait.
    """
    handlers = _Handlers(on_connect, on_message, on_handler_error)
    broker = where if callable(where) else lambda: where
    while True:
        error = await _one_connection(connect, where=f"{broker()} as {who}", handlers=handlers,
                                      backoff=backoff)  # fmt: skip
        delay = backoff.next_delay()
        if on_disconnect is not None:  # first: it may move `where` on to another broker
            on_disconnect(error)
        log.warning("MQTT: %s; reconnecting to %s in %.2f s", error, broker(), delay)
        await asyncio.sleep(delay)


@dataclass(frozen=True)
class _Handlers:
    """The caller's callbacks, with the guard that keeps their bugs off the connection."""

    on_connect: Callable[[MqttClient], Awaitable[None]]
    on_message: Callable[[Message], Awaitable[None]]
    on_error: HandlerError | None

    async def connected(self, client: MqttClient) -> None:
        try:
            await self.on_connect(client)
        except (BrokerError, asyncio.CancelledError):
            raise
        except Exception as e:
            log.exception("MQTT: setting up the connection failed")
            raise BrokerError(f"setting up the connection failed: {e!r}") from e

    async def dispatch(self, message: Message) -> None:
        try:
            await self.on_message(message)
        except (BrokerError, asyncio.CancelledError):
            raise
        except Exception as e:
            log.exception("MQTT: handling a message on %s failed", message.topic)
            await self._report(message, e)

    async def _report(self, message: Message, error: Exception) -> None:
        if self.on_error is None:
            return
        try:
            await self.on_error(message, error)
        except (BrokerError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("MQTT: reporting a failed message handler failed too")


async def _one_connection(
    connect: Callable[[], MqttClient], *, where: str, handlers: _Handlers, backoff: Backoff
) -> BrokerError:
    """Run one connection until it ends; return why it ended."""
    try:
        async with connect() as client:
            log.info("MQTT: connected to %s (session present: %s)", where, client.session_present)
            await handlers.connected(client)
            # Reset only now: a broker that accepts and then fails on_connect still backs off.
            backoff.reset()
            async for message in client.messages():
                await handlers.dispatch(message)
    except BrokerError as e:
        return e
    return MqttDisconnectedError("the message stream ended")  # messages() ends by raising
