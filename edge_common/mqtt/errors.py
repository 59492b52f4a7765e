"""What the MQTT adapter raises, and how a service substitutes its own error types.

Each service keeps one root for its errors (`AgentError`, `RegistryError`): it subclasses these
and hands the adapter an `ErrorTypes` naming its subclasses, so that the adapter raises errors
the service's own handlers already catch, and `follow` still recognizes them.
"""

from __future__ import annotations

from dataclasses import dataclass


class BrokerError(Exception):
    """The MQTT broker cannot be reached, refused something, or the connection ended."""


class MqttConnectError(BrokerError):
    """Connecting failed: unreachable host, TLS failure, refused CONNECT or no answer in time."""


class MqttDisconnectedError(BrokerError):
    """The connection ended before an operation completed, or while messages were awaited."""


class MqttAckTimeoutError(MqttDisconnectedError):
    """The broker kept silent past the bound while an acknowledgement was awaited; the
    connection was cut (a broker node that answers pings but serves nothing)."""


class MqttSubscribeError(BrokerError):
    """The broker refused a subscription (SUBACK failure code 0x80)."""

    refused: tuple[str, ...] = ()  # the filters refused; the others of the SUBSCRIBE hold


class MqttSettingsError(ValueError):
    """Settings that cannot work (a bad URL, TLS files with mqtt://, unreadable PEM files)."""


@dataclass(frozen=True)
class ErrorTypes:
    """The classes the adapter raises; a service passes subclasses of its own."""

    broker: type[BrokerError] = BrokerError
    connect: type[MqttConnectError] = MqttConnectError
    disconnected: type[MqttDisconnectedError] = MqttDisconnectedError
    subscribe: type[MqttSubscribeError] = MqttSubscribeError
    ack_timeout: type[MqttAckTimeoutError] = MqttAckTimeoutError
    settings: type[ValueError] = MqttSettingsError
