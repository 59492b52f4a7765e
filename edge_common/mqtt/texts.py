"""The sentences an MQTT connection fails with: what went wrong, where, and what to check."""

from __future__ import annotations

from dataclasses import dataclass

from paho.mqtt.reasoncodes import ReasonCode

from edge_common import tls_hints
from edge_common.broker_address import BrokerAddress

_BAD_CREDENTIALS = frozenset({0x86, 0x87})  # MQTT 3.1.1 CONNACK 4 and 5, as paho reports them


@dataclass(frozen=True)
class ConnectionTexts:
    """Error texts of one connection to `address` as `username`."""

    address: BrokerAddress
    username: str | None
    has_client_cert: bool
    refused_hint: str = ""  # said after refused credentials: where the password comes from

    def refused(self, reason: ReasonCode) -> str:
        """The broker answered CONNECT with a refusal."""
        if reason.value in _BAD_CREDENTIALS:
            who = self.username or "anonymous clients"
            hint = self.refused_hint if self.username else ""
            return (
                f"the broker refused the credentials of {who} (at {self.address}: {reason}){hint}"
            )
        return f"the broker at {self.address} refused the connection: {reason}"

    def unreachable(self, error: Exception, names: list[str] | None = None) -> str:
        """The TCP connect or the TLS handshake failed."""
        return tls_hints.unreachable_text(str(self.address), self.address.host, error, names)

    def dropped(self) -> str:
        """The broker closed the connection before its CONNACK."""
        hint = "" if self.address.tls else tls_hints.PLAIN_TO_TLS_HINT
        if self.address.tls and not self.has_client_cert:
            hint = " (does it require a TLS client certificate? none is configured)"
        return f"the broker at {self.address} closed the connection before accepting it{hint}"

    def lost(self, reason: str) -> str:
        """An accepted connection ended."""
        # paho reports a dropped socket as "Unspecified error", which tells the reader nothing.
        why = "the connection dropped" if reason == "Unspecified error" else reason
        return f"lost the connection to the broker at {self.address}: {why}"
