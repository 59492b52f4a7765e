"""The agent's link to the broker: one `AgentMqtt` at a time, under the shared reconnect policy.

The policy (jittered exponential backoff, handler errors kept off the connection) is
`edge_common/mqtt/reconnect.py`, which the registry's link follows too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import NoReturn

from edge_agent.config.settings import MqttSettings
from edge_agent.mqtt.address import broker_address
from edge_agent.mqtt.connection import AgentMqtt, Message
from edge_common.mqtt import Backoff, HandlerError, MqttClient, follow

__all__ = ["Backoff", "HandlerError", "run_with_reconnect"]


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
    """Stay connected to `[mqtt]`'s broker until cancelled (see `edge_common.mqtt.follow`).

    With several URLs (`[mqtt] urls`, the nodes of a clustered broker) each attempt after one
    that failed or a connection that ended goes to the next URL, round the list.
    """
    nodes = _Nodes(settings.urls)

    async def connected(client: MqttClient) -> None:
        assert isinstance(client, AgentMqtt)  # noqa: S101 - `connect` below makes only these
        await on_connect(client)

    def ended(error: Exception) -> None:
        nodes.advance()
        if on_disconnect is not None:
            on_disconnect(error)

    await follow(
        lambda: AgentMqtt(replace(settings, url=nodes.url), client_id=client_id, will=will),
        where=nodes.address, who=f"{client_id} (user {settings.username or 'anonymous'})",
        on_connect=connected, on_message=on_message, backoff=backoff,
        on_disconnect=ended, on_handler_error=on_handler_error,
    )  # fmt: skip


class _Nodes:
    """The broker URLs in turn: the current one, and a move to the next."""

    def __init__(self, urls: tuple[str, ...]) -> None:
        self._urls = urls
        self._index = 0
        for url in urls:
            broker_address(url)  # a malformed URL is a ConfigError before any attempt

    @property
    def url(self) -> str:
        """The URL the next connection goes to."""
        return self._urls[self._index]

    def address(self) -> str:
        """HOST:PORT of `url`, for the log."""
        return str(broker_address(self.url))

    def advance(self) -> None:
        """Move on to the next URL (after the last, the first)."""
        self._index = (self._index + 1) % len(self._urls)
