"""Where the broker is and how to talk to it: the `[mqtt]` URL, the TLS context, and a paho
client that outlives a callback that raises."""

from __future__ import annotations

import logging
import ssl
from typing import Any

import paho.mqtt.client as paho

from edge_agent.config.settings import MqttSettings
from edge_agent.errors import ConfigError
from edge_common.broker_address import BrokerAddress, BrokerURLError

log = logging.getLogger(__name__)


def broker_address(url: str) -> BrokerAddress:
    """Parse `[mqtt] url`, raising ConfigError if it is malformed."""
    try:
        return BrokerAddress.parse(url, "mqtt.url")
    except BrokerURLError as e:
        raise ConfigError(str(e)) from None


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
