"""Bytes on the wire: loopback TCP relays between each agent and the broker and registry.

Every agent's device.toml is pointed at relays of its own, which count the bytes that flow
towards the agent (MQTT packets with their headers, or HTTP answers), so a benchmark can say
what one update costs a device on a metered link. The relays run on one event loop in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from pathlib import Path

LOCALHOST = "127.0.0.1"


class _Relay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.to_agent = 0  # bytes
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None  # noqa: S101 - started before use
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, LOCALHOST, 0)

    async def _serve(self, agent_in: asyncio.StreamReader, agent_out: asyncio.StreamWriter) -> None:
        try:
            up_in, up_out = await asyncio.open_connection(LOCALHOST, self.target_port)
        except OSError:
            agent_out.close()
            return
        await asyncio.gather(
            self._pump(agent_in, up_out, count=False), self._pump(up_in, agent_out, count=True)
        )

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, count: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if count:
                    self.to_agent += len(data)
                sink.write(data)
                await sink.drain()
        sink.close()


class WireMeter:
    """Relays per agent (MQTT and HTTP) and their counts of bytes sent to the agent."""

    def __init__(self, mqtt_port: int, api_port: int) -> None:
        self._ports = (mqtt_port, api_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._relays: dict[str, tuple[_Relay, _Relay]] = {}

    def attach(self, device_id: str, config: Path) -> None:
        """Give the agent relays of its own and point its config at them."""
        relays = (_Relay(self._ports[0]), _Relay(self._ports[1]))
        for relay in relays:
            asyncio.run_coroutine_threadsafe(relay.start(), self._loop).result(10)
        self._relays[device_id] = relays
        text = config.read_text()
        mqtt_url = f'url = "mqtt://{LOCALHOST}:{relays[0].port}"'
        http_url = f'http_url = "http://{LOCALHOST}:{relays[1].port}"'
        text = re.sub(r'(?m)^url = "mqtt://[^"]*"', mqtt_url, text)
        text = re.sub(r'(?m)^http_url = "[^"]*"', http_url, text)
        config.write_text(text)

    def received(self) -> dict[str, int]:
        """Bytes each agent has been sent so far (MQTT and HTTP together)."""
        return {device: sum(r.to_agent for r in relays) for device, relays in self._relays.items()}

    def close(self) -> None:
        """Stop the relays and their thread."""

        async def stop() -> None:
            for relays in self._relays.values():
                for relay in relays:
                    if relay.server is not None:
                        relay.server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
