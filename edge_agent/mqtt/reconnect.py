"""The caller's reconnect policy: jittered exponential backoff around one `AgentMqtt` at a time.

This is aiomqtt's recipe (`docs/reconnection.md`): paho never reconnects by itself; a loop opens
a fresh connection, runs the caller's `on_connect`, dispatches messages until the connection
ends, sleeps a jittered delay and starts over, until it is cancelled. With several broker URLs
(the nodes of a clustered broker, `[mqtt] urls`) each new attempt goes to the next node in turn:
a node that is gone costs one failed attempt, not the rest of the backoff.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn

from edge_agent.config.settings import MqttSettings
from edge_agent.errors import BrokerError, MqttDisconnectedError
from edge_agent.mqtt.address import broker_address
from edge_agent.mqtt.connection import AgentMqtt, Message

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


async def run_with_reconnect(
    settings: MqttSettings,
    *,
    client_id: str,
    will: tuple[str, bytes] | None,
    on_connect: Callable[[AgentMqtt], Awaitable[None]],
    on_message: Callable[[Message], Awaitable[None]],
    backoff: Backoff,
    on_disconnect: Callable[[Exception], None] | None = None,
    on_handler_error: HandlerError | None = None,
) -> NoReturn:
    """Stay connected until cancelled: connect, on_connect, dispatch messages, back off, repeat.

    `on_connect` runs on every connection (publish state, subscribe: a restarted broker has
    forgotten the session). Messages go to `on_message` one at a time, in order. A BrokerError
    from either ends the connection like a drop does. Any other exception from `on_message` is
    logged with its traceback, handed to `on_handler_error` and the next message handled: the
    connection stays up (leaving it would send a clean DISCONNECT, which discards the will).
    Any other exception from `on_connect` ends that connection and the loop reconnects.
    `on_disconnect` hears why each attempt or connection ended. Attempts go round the URLs of
    `settings.urls` in order, starting with the first.
    """
    handlers = _Handlers(on_connect, on_message, on_handler_error)
    nodes = itertools.cycle(settings.urls)
    url = next(nodes)
    while True:
        error = await _one_connection(
            settings, url, client_id=client_id, will=will, handlers=handlers, backoff=backoff
        )
        url = next(nodes)
        delay = backoff.next_delay()
        log.warning("MQTT: %s; reconnecting to %s in %.2f s", error, broker_address(url), delay)
        if on_disconnect is not None:
            on_disconnect(error)
        await asyncio.sleep(delay)


@dataclass(frozen=True)
class _Handlers:
    """The caller's callbacks, with the guard that keeps their bugs off the connection."""

    on_connect: Callable[[AgentMqtt], Awaitable[None]]
    on_message: Callable[[Message], Awaitable[None]]
    on_error: HandlerError | None

    async def connected(self, client: AgentMqtt) -> None:
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
    settings: MqttSettings,
    url: str,
    *,
    client_id: str,
    will: tuple[str, bytes] | None,
    handlers: _Handlers,
    backoff: Backoff,
) -> BrokerError:
    """Run one connection to the broker at `url` until it ends; return why it ended."""
    try:
        async with AgentMqtt(settings, client_id=client_id, will=will, url=url) as client:
            log.info(
                "MQTT: connected to %s as %s (user %s, session present: %s)",
                broker_address(url),
                client_id,
                settings.username or "anonymous",
                client.session_present,
            )
            await handlers.connected(client)
            # Reset only now: a broker that accepts and then fails on_connect still backs off.
            backoff.reset()
            async for message in client.messages():
                await handlers.dispatch(message)
    except BrokerError as e:
        return e
    return MqttDisconnectedError("the message stream ended")  # messages() ends by raising
