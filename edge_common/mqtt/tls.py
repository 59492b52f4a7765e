"""How to talk to the broker safely: the TLS context, and a paho client that outlives a callback
that raises."""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any

import paho.mqtt.client as paho

from edge_common.mqtt.errors import MqttSettingsError

log = logging.getLogger(__name__)
PemFile = str | os.PathLike[str]


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


def tls_context(
    ca_file: PemFile | None, client_cert: PemFile | None = None, client_key: PemFile | None = None
) -> ssl.SSLContext:
    """A verifying client context: the configured CA (else the system store), optional cert.

    MqttSettingsError when the PEM files cannot be read or do not match.
    """
    try:
        # With a cafile only that CA is trusted: a fleet pins its own broker CA.
        context = ssl.create_default_context(cafile=ca_file)
        if client_cert is not None:
            context.load_cert_chain(client_cert, client_key)
    except OSError as e:  # ssl.SSLError included: unreadable or mismatched PEM files
        raise MqttSettingsError(f"cannot load the TLS files of [mqtt]: {e}") from e
    context.sslsocket_class = _ClosingSSLSocket  # the documented hook for wrap_socket's type
    return context


def survive_callback_errors(client: paho.Client) -> None:
    """Have paho log a callback that raises and carry on.

    By default the exception ends paho's network thread, leaving a connection that neither
    pings nor reports its end: its owner would wait on it forever.
    """
    client.suppress_exceptions = True
    client.on_log = _log_suppressed


def _log_suppressed(_client: paho.Client, _userdata: Any, level: int, text: str) -> None:
    """Paho's thread: pass on the callback failures it suppressed, not its routine chatter."""
    if level == paho.MQTT_LOG_ERR and text.startswith("Caught exception"):
        log.error("MQTT: %s", text)
