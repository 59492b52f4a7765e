"""A TCP relay in front of a broker: a network link tests can cut, take down, stall or slow down.

It forwards whole MQTT packets (`tests.support.mqtt_frames`), so it also counts what crosses
the link in each direction and can act at an exact moment: cut the link, or freeze it half-open,
when the client sends a given packet. `RelayThread` runs one on its own event loop for the
synchronous end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from .broker import LOCALHOST, Broker
from .mqtt_frames import FrameReader, Packet

T = TypeVar("T")
Action = Literal["cut", "stall", "drop"]


@dataclass(eq=False)
class _Link:
    """One relayed connection: its two writers and whether it still moves data."""

    client_out: asyncio.StreamWriter
    broker_out: asyncio.StreamWriter
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    dead: bool = False

    def abort(self) -> None:
        self.dead = True
        for writer in (self.client_out, self.broker_out):
            writer.transport.abort()
        self.flowing.set()  # wake stalled pumps so that they notice and end


@dataclass(eq=False)
class _Trigger:
    matches: Callable[[Packet], bool]
    action: Action
    every: bool = False  # fire at every matching packet, not only the first
    fired: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0


class TcpRelay:
    """Relays TCP to a broker; `cut()` drops every link, `down()` also refuses new ones."""

    def __init__(self, broker: Broker, *, to_client_bytes_per_s: float | None = None) -> None:
        self._target = (broker.host, broker.port)
        self._server: asyncio.Server | None = None
        self._links: list[_Link] = []
        self._stalled: list[_Link] = []
        self._triggers: list[_Trigger] = []
        self.up = True  # False: new connections are refused, as with no network at all
        self.forward_to_client = True  # False swallows what the broker sends (PUBACKs...)
        self.reading_from_client = asyncio.Event()  # cleared: the client's sends back up
        self.reading_from_client.set()
        self.to_client_bytes_per_s = to_client_bytes_per_s  # None: as fast as it goes
        self.bytes_to_broker = 0
        self.to_client: list[Packet] = []  # every packet forwarded from the broker, in order
        self.to_broker: list[Packet] = []
        self.connections = 0  # relayed connections accepted
        self.open = 0  # relayed connections not yet ended
        self.refused = 0  # connection attempts refused while down
        self.broker_closed = asyncio.Event()  # the broker is done with a relayed connection

    @property
    def port(self) -> int:
        """The relay's local port."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """The relay's mqtt:// URL."""
        return f"mqtt://{LOCALHOST}:{self.port}"

    def cut(self) -> None:
        """Drop every relayed connection at once, as a dead network link would."""
        for link in self._links:
            link.abort()
        self._links.clear()

    def down(self) -> None:
        """The network is gone: every connection drops and new ones are refused."""
        self.up = False
        self.cut()

    def stall(self) -> None:
        """Freeze every current link half-open: nothing crosses it, neither side sees it close."""
        for link in self._links:
            link.flowing.clear()
        self._stalled += self._links
        self._links = []

    def release_stalled(self) -> None:
        """Close the links `stall` froze (new links were never affected)."""
        for link in self._stalled:
            link.abort()
        self._stalled.clear()

    def when_client_sends(
        self, matches: Callable[[Packet], bool], action: Action, *, every: bool = False
    ) -> asyncio.Event:
        """Once (or at `every` one), at a client packet `matches` accepts: cut or stall its link
        before it reaches the broker, or drop just that packet (the broker never sees it, so
        never answers it, and the link goes on). The returned event is set when that happened."""
        trigger = _Trigger(matches, action, every)
        self._triggers.append(trigger)
        return trigger.fired

    def fired(self, event: asyncio.Event) -> int:
        """How many times the trigger `when_client_sends` returned `event` for acted."""
        return sum(t.count for t in self._triggers if t.fired is event)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._relay, LOCALHOST, 0)
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        self.release_stalled()
        await self._server.wait_closed()

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        if not self.up:
            self.refused += 1
            client_out.transport.abort()
            return
        broker_in, broker_out = await asyncio.open_connection(*self._target)
        link = _Link(client_out, broker_out)
        link.flowing.set()
        self._links.append(link)
        self.connections += 1
        self.open += 1
        try:
            async with asyncio.TaskGroup() as relays:
                relays.create_task(self._pump(link, client_in, broker_out, to_broker=True))
                relays.create_task(self._pump(link, broker_in, client_out, to_broker=False))
        finally:
            self.open -= 1
        self.broker_closed.set()

    async def _pump(
        self,
        link: _Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        to_broker: bool,
    ) -> None:
        frames = FrameReader()
        with contextlib.suppress(ConnectionError):
            while True:
                if to_broker:
                    await self.reading_from_client.wait()
                await link.flowing.wait()
                data = await source.read(65536)
                if not data or link.dead:
                    break
                for packet in frames.feed(data):
                    if not await self._forward(link, packet, sink, to_broker=to_broker):
                        return
            # Half-close: a client's DISCONNECT then EOF reach the broker in that order.
            if sink.can_write_eof():
                sink.write_eof()

    async def _forward(
        self, link: _Link, packet: Packet, sink: asyncio.StreamWriter, *, to_broker: bool
    ) -> bool:
        """Send one packet on; False once the link is gone."""
        action = self._fire_triggers(link, packet) if to_broker else None
        if action == "drop":
            return True  # swallowed; the link goes on
        if action is not None:
            await link.flowing.wait()  # stalled before this packet: it is never sent
            return False
        await link.flowing.wait()
        if link.dead:
            return False
        if to_broker:
            self.bytes_to_broker += packet.size
            self.to_broker.append(packet)
        elif not self.forward_to_client:
            return True
        else:
            self.to_client.append(packet)
        sink.write(packet.raw)
        await sink.drain()
        if not to_broker and self.to_client_bytes_per_s:
            await asyncio.sleep(packet.size / self.to_client_bytes_per_s)
        return True

    def _fire_triggers(self, link: _Link, packet: Packet) -> Action | None:
        """Run the first trigger `packet` matches; its action, None when the packet goes on."""
        for trigger in self._triggers:
            armed = trigger.every or not trigger.fired.is_set()
            if armed and trigger.matches(packet):
                trigger.fired.set()
                trigger.count += 1
                if trigger.action == "drop":
                    return "drop"
                if trigger.action == "cut":
                    link.abort()
                    with contextlib.suppress(ValueError):
                        self._links.remove(link)
                else:
                    link.flowing.clear()
                    with contextlib.suppress(ValueError):
                        self._links.remove(link)
                    self._stalled.append(link)
                return trigger.action
        return None


class RelayThread:
    """A `TcpRelay` on an event loop of its own thread, driven from synchronous code."""

    def __init__(self, broker: Broker, **options: Any) -> None:
        self._broker = broker
        self._options = options
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._relay: TcpRelay | None = None

    def __enter__(self) -> Self:
        self._thread.start()

        async def start() -> TcpRelay:
            relay = TcpRelay(self._broker, **self._options)
            return await relay.__aenter__()

        self._relay = self._run(start())
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        relay = self.relay
        self._run(relay.__aexit__(None, None, None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def relay(self) -> TcpRelay:
        """The relay itself: read or change it only through `call`."""
        assert self._relay is not None
        return self._relay

    def call(self, function: Callable[[TcpRelay], T]) -> T:
        """Run `function(relay)` on the relay's loop and return what it returns."""

        async def run() -> T:
            return function(self.relay)

        return self._run(run())

    def wait(self, event: Callable[[TcpRelay], asyncio.Event], timeout: float) -> None:
        """Wait until the relay's event is set."""

        async def run() -> None:
            await asyncio.wait_for(event(self.relay).wait(), timeout)

        self._run(run(), timeout + 5)

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)
