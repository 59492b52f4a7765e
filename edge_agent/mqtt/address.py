"""Where the broker is and how to talk to it: the `[mqtt]` URL, the TLS context, and a paho
client that outlives a callback that raises."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho

from edge_agent.config import MqttSettings
from edge_agent.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    """Host, port and TLS flag parsed from `mqtt://host[:port]` or `mqtts://host[:port]`."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse the broker URL of `[mqtt] url`, raising ConfigError if it is malformed."""
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            # Not echoed: the URL holds a secret. Config keys keep it out of logs and errors.
            raise ConfigError("mqtt.url must not carry credentials; use mqtt.username and a file")
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"mqtt.url {url!r} must look like mqtt://host[:port] or mqtts://...")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as e:
            raise ConfigError(f"mqtt.url {url!r} has a bad port") from e
        return cls(parts.hostname, port, tls)

    def __str__(self) -> str:
        # Never the raw URL: it could carry credentials in its userinfo part.
        return f"{self.host}:{self.port}"


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSLSocket that closes itself when its handshake fails."""

    def do_handshake(self, block: bool = False) -> None:
        """Handshake; on failure close the socket, which paho would leave open."""
        # paho's _ssl_wrap_socket raises without closing; the socket would live on in the
        # traceback until garbage collection (a ResourceWarning per failed attempt).
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """A verifying client context: the configured CA (else the system store), optional cert."""
    try:
        # With a cafile only that CA is trusted: a fleet pins its own broker CA.
        context = ssl.create_default_context(cafile=settings.ca_file)
        if settings.client_cert is not None:
            context.load_cert_chain(settings.client_cert, settings.client_key)
    except OSError as e:  # ssl.SSLError included: unreadable or mismatched PEM files
        raise ConfigError(f"cannot load the TLS files of [mqtt]: {e}") from e
    context.sslsocket_class = _ClosingSSLSocket  # the documented hook for wrap_socket's type
    return context


def survive_callback_errors(client: paho.Client) -> None:
    """Have paho log a callback that raises and carry on.

    By default the exception ends paho's network thread, leaving a connection that neither
    pings nor reports its end: the agent would wait on it forever.
    """
    client.suppress_exceptions = True
    client.on_log = _log_suppressed


def _log_suppressed(_client: paho.Client, _userdata: Any, level: int, text: str) -> None:
    """Paho's thread: pass on the callback failures it suppressed, not its routine chatter."""
    if level == paho.MQTT_LOG_ERR and text.startswith("Caught exception"):
        log.error("MQTT: %s", text)
