"""The agent's link to the broker: one `AgentMqtt` at a time, under the shared reconnect policy.

The policy (jittered exponential backoff, handler errors kept off the connection) is
`edge_common/mqtt/reconnect.py`, which the registry's link follows too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
    """Stay connected to `[mqtt]`'s broker until cancelled (see `edge_common.mqtt.follow`)."""
    address = broker_address(settings.url)

    async def connected(client: MqttClient) -> None:
        assert isinstance(client, AgentMqtt)  # noqa: S101 - `connect` below makes only these
        await on_connect(client)

    await follow(
        lambda: AgentMqtt(settings, client_id=client_id, will=will),
        where=str(address), who=f"{client_id} (user {settings.username or 'anonymous'})",
        on_connect=connected, on_message=on_message, backoff=backoff,
        on_disconnect=on_disconnect, on_handler_error=on_handler_error,
    )  # fmt: skip
