"""The MQTT adapter both services use: paho-mqtt behind asyncio, the aiomqtt way.

`MqttClient` is ONE connection, opened and closed by `async with`. When it drops, its message
iterator raises `MqttDisconnectedError` and the caller reconnects: `follow` with a jittered
`Backoff`. Paho's own automatic reconnect is off, so the policy lives in one place. The agent
(`edge_agent/mqtt`) and the registry (`model_registry/mqtt/client.py`) wrap it with their
settings and errors. The one package here that imports more than the standard library: see
docs/development.md, "Import rules".
"""

from edge_common.mqtt.connection import Message, MqttClient
from edge_common.mqtt.errors import (
    BrokerError,
    ErrorTypes,
    MqttAckTimeoutError,
    MqttConnectError,
    MqttDisconnectedError,
    MqttSettingsError,
    MqttSubscribeError,
)
from edge_common.mqtt.reconnect import Backoff, HandlerError, follow
from edge_common.mqtt.settings import BrokerLogin, ConnectionSettings

__all__ = [
    "Backoff",
    "BrokerError",
    "BrokerLogin",
    "ConnectionSettings",
    "ErrorTypes",
    "HandlerError",
    "Message",
    "MqttAckTimeoutError",
    "MqttClient",
    "MqttConnectError",
    "MqttDisconnectedError",
    "MqttSettingsError",
    "MqttSubscribeError",
    "follow",
]
