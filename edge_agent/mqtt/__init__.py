"""The agent's MQTT link: paho-mqtt behind a small asyncio adapter, the aiomqtt way.

`AgentMqtt` is ONE connection, opened and closed by `async with`. When it drops, its message
iterator raises `MqttDisconnectedError` and the caller reconnects: `run_with_reconnect` with a
jittered `Backoff`. Paho's own automatic reconnect is off, so the policy lives in one place.
"""

from edge_agent.mqtt.connection import AgentMqtt, Message
from edge_agent.mqtt.reconnect import Backoff, run_with_reconnect

__all__ = ["AgentMqtt", "Backoff", "Message", "run_with_reconnect"]
