"""The embedded MQTT broker: amqtt in the registry's process, so one command runs a whole lab.

It admits the clients mosquitto would (passwords from the registry, `$7$` hashes checked with
`verify_password`) and enforces the same rules (`acl.is_allowed`). amqtt speaks MQTT 3.1.1 only,
so clients must connect with protocol MQTTv311. `_amqtt_broker` fixes the amqtt 0.12 bugs that
broke retained delivery, takeovers, keep-alive and authentication order, binds devices to their
own client id and refuses packets over `limits.MAX_PACKET_BYTES`; fleets use mosquitto.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

from amqtt.errors import BrokerError

from edge_protocol.topics import Topics
from model_registry.errors import RegistryError
from model_registry.mqtt._amqtt_broker import EdgeBroker
from model_registry.mqtt._amqtt_plugins import (
    BrokerPolicy,
    EdgeAuthPlugin,
    EdgeTopicPlugin,
    PasswordLookup,
)
from model_registry.mqtt.acl import check_username

# amqtt logs every connection and packet at INFO/DEBUG, and `transitions` every state change.
_NOISY_LOGGERS = ("amqtt", "transitions")
_LISTENER = "default"  # amqtt requires a listener of this name
# amqtt logs a failed start with its traceback here, before raising what we report in one line.
_STARTUP_LOGGER = "amqtt.broker"
log = logging.getLogger(__name__)


class EmbeddedBrokerError(RegistryError):
    """The embedded broker could not start, for example because its port is taken."""


class EmbeddedBroker:
    """An MQTT 3.1.1 broker on the current event loop, with the fleet's credentials and ACL."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        topics: Topics,
        registry_user: str,
        password_lookup: PasswordLookup,
        allow_anonymous: bool = False,
        registry_password: str | None = None,
    ) -> None:
        check_username(registry_user)
        self.host = host
        self._requested_port = port
        self._policy = BrokerPolicy(
            topics, registry_user, password_lookup, allow_anonymous, registry_password
        )
        self._broker: EdgeBroker | None = None

    @property
    def port(self) -> int:
        """The listening port; with port 0, the one the OS picked (for the first address)."""
        if self._broker is None:
            return self._requested_port
        sockets = self._broker._servers[_LISTENER].instance.sockets
        return int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """`mqtt://host:port` for clients."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    async def start(self) -> None:
        """Listen on host:port; the broker runs as tasks of the running event loop."""
        if self._broker is not None:
            raise EmbeddedBrokerError("the embedded broker is already running")
        _quiet_noisy_loggers()
        broker = EdgeBroker(self._config(), self._policy)
        try:
            with _quiet_failed_start():
                await broker.start()
        except BrokerError as e:
            log.debug("amqtt failed to start", exc_info=True)
            raise EmbeddedBrokerError(
                f"cannot start the embedded MQTT broker on {self.host}:{self._requested_port}: {e} "
                "(is another broker on that port? pass --embedded-broker HOST:PORT, with port 0 "
                "for any free one, or set [mqtt] embedded_listen)"
            ) from e
        self._broker = broker

    async def disconnect(self, username: str) -> int:
        """Close the connections of `username` (a removed device); return how many there were."""
        return 0 if self._broker is None else await self._broker.disconnect_user(username)

    async def stop(self) -> None:
        """Disconnect every client and stop listening; retained messages and sessions are lost."""
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _config(self) -> dict[str, Any]:
        """amqtt's broker config: one TCP listener and only our two plugins."""
        # Naming the plugins replaces amqtt's defaults: no anonymous-auth, $SYS or logger plugins.
        plugin_config = {"policy": self._policy}
        # amqtt splits `bind` at the last colon and keeps brackets, so IPv6 goes in bare.
        return {
            "listeners": {
                _LISTENER: {"type": "tcp", "bind": f"{self.host}:{self._requested_port}"}
            },
            "plugins": {
                _dotted(EdgeAuthPlugin): plugin_config,
                _dotted(EdgeTopicPlugin): plugin_config,
            },
        }


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@contextmanager
def _quiet_failed_start() -> Iterator[None]:
    """Drop amqtt's own report of a failed start: the BrokerError it raises says the same."""
    startup = logging.getLogger(_STARTUP_LOGGER)
    drop = _DropFailedStart()
    startup.addFilter(drop)
    try:
        yield
    finally:
        startup.removeFilter(drop)


class _DropFailedStart(logging.Filter):
    """Refuses ERROR records with a traceback: amqtt's "Broker startup failed"."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the failed-start report, True for everything else."""
        return not (record.levelno >= logging.ERROR and record.exc_info)


def _quiet_noisy_loggers() -> None:
    """Raise amqtt's loggers to WARNING unless the application configured them itself."""
    for name in _NOISY_LOGGERS:
        noisy = logging.getLogger(name)
        if noisy.level == logging.NOTSET:
            noisy.setLevel(logging.WARNING)
