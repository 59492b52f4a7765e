"""Where a broker is: host, port and TLS flag parsed from an mqtt:// or mqtts:// URL.

Both services read such URLs from their config files. Credentials never travel in them: a URL
is shown in logs and errors, so a password there would leak, and both configs have keys (and a
file) for the username and password instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

PLAIN_PORT, TLS_PORT = 1883, 8883


class BrokerURLError(ValueError):
    """A broker URL that cannot be used; the message names the setting, never its secret."""


@dataclass(frozen=True)
class BrokerAddress:
    """Host, port and whether TLS is on, parsed from `mqtt://host[:port]` or `mqtts://...`."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str, setting: str = "mqtt.url") -> BrokerAddress:
        """Parse the URL of `setting`, raising BrokerURLError naming it if it is malformed."""
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            # Not echoed: the URL holds a secret.
            raise BrokerURLError(
                f"{setting} must not carry credentials; use mqtt.username and a password file"
            )
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise BrokerURLError(
                f"{setting} {url!r} must look like mqtt://host[:port] or mqtts://host[:port]"
            )
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (TLS_PORT if tls else PLAIN_PORT)
        except ValueError as e:
            raise BrokerURLError(f"{setting} {url!r} has a bad port") from e
        return cls(parts.hostname, port, tls)

    def __str__(self) -> str:
        # Never the raw URL, which a mistaken config could still give credentials.
        return f"{self.host}:{self.port}"
