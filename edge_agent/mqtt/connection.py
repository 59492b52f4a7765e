"""One MQTT connection of the agent: the shared adapter with the agent's errors and hint.

`edge_common/mqtt/connection.py` is the adapter (threads, callbacks, `async with`); here it
raises the agent's `BrokerError` family and `ConfigError`, and says where a device's password
comes from when the broker refuses it.
"""

from __future__ import annotations

from edge_agent.config.settings import MqttSettings
from edge_agent.errors import MQTT_ERRORS
from edge_common.mqtt import Message, MqttClient

__all__ = ["AgentMqtt", "Message"]

# The two usual causes: a password file from another bundle, or a removed device.
REFUSED_HINT = (
    "; is mqtt.password_file the one of this device's bundle? A device removed "
    "from the registry is refused until it is provisioned again"
)


class AgentMqtt(MqttClient):
    """One connection with the device's persistent session; `async with` connects and closes."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        will: tuple[str, bytes] | None = None,
        connect_timeout_s: float = 30,
    ) -> None:
        super().__init__(
            settings, client_id=client_id, will=will, connect_timeout_s=connect_timeout_s,
            errors=MQTT_ERRORS, refused_hint=REFUSED_HINT, ack_timeout_s=settings.ack_timeout_s,
        )  # fmt: skip
