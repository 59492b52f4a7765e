"""A TCP relay in front of a broker: a network link tests can cut, take down, or make one-way."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

from .broker import LOCALHOST, Broker


class TcpRelay:
    """Relays TCP to a broker; `cut()` drops every link, `down()` also refuses new ones."""

    def __init__(self, broker: Broker) -> None:
        self._target = (broker.host, broker.port)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.up = True  # False: new connections are refused, as with no network at all
        self.forward_to_client = True  # False swallows what the broker sends (PUBACKs...)
        self.reading_from_client = asyncio.Event()  # cleared: the client's sends back up
        self.reading_from_client.set()
        self.bytes_to_broker = 0
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
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    def down(self) -> None:
        """The network is gone: every connection drops and new ones are refused."""
        self.up = False
        self.cut()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._relay, LOCALHOST, 0)
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        if not self.up:
            client_out.transport.abort()
            return
        broker_in, broker_out = await asyncio.open_connection(*self._target)
        self._writers += [client_out, broker_out]
        async with asyncio.TaskGroup() as relays:
            relays.create_task(self._pump(client_in, broker_out, to_broker=True))
            relays.create_task(self._pump(broker_in, client_out, to_broker=False))
        self.broker_closed.set()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, to_broker: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                if to_broker:
                    await self.reading_from_client.wait()
                data = await source.read(65536)
                if not data:
                    break
                if to_broker:
                    self.bytes_to_broker += len(data)
                if to_broker or self.forward_to_client:
                    sink.write(data)
                    await sink.drain()
            # Half-close: a client's DISCONNECT then EOF reach the broker in that order.
            if sink.can_write_eof():
                sink.write_eof()
