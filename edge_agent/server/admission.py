"""How many connections one server keeps open, and what becomes of the ones beyond."""

from __future__ import annotations

import enum
import logging
import math
import time
from dataclasses import dataclass
from http import HTTPStatus

from edge_agent.server.middleware import error_body
from edge_agent.server.settings import ServerConfig

log = logging.getLogger(__name__)

# A whole request head, as Node.js bounds it: aiohttp bounds only each line, which lets a
# connection hold 32 x 8 KiB while its head is incomplete.
MAX_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 32  # header lines in a request head (aiohttp's default is 128, of 8190 bytes each)
WARN_EVERY_S = 60.0  # at most one warning a minute about the connection cap


class Admission(enum.Enum):
    """What happens to a new connection."""

    SERVE = "serve"
    REFUSE = "refuse"  # over the cap: its request gets a 503, then the connection closes
    DROP = "drop"  # far over the cap: closed at once


@dataclass(frozen=True)
class ConnectionLimits:
    """The [server] settings that bound connections."""

    max_connections: int
    header_timeout_s: float
    idle_timeout_s: float
    send_timeout_s: float
    retry_after_s: int

    @classmethod
    def of(cls, config: ServerConfig) -> ConnectionLimits:
        """The connection limits of a server configuration."""
        return cls(
            config.max_connections,
            config.header_timeout_s,
            config.idle_timeout_s,
            config.send_timeout_s,
            config.retry_after_s,
        )

    @property
    def overflow(self) -> int:
        """Connections beyond the cap that still get their 503 before the rest are dropped."""
        return max(8, self.max_connections // 8)


class ConnectionCount:
    """The open connections of one server, shared by its handlers."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.served = 0
        self.refused = 0
        self._warned_at = -math.inf
        message = f"the request head did not arrive within {limits.header_timeout_s:g} s"
        self.head_timeout_reply = raw_reply(HTTPStatus.REQUEST_TIMEOUT, message)
        message = f"the request head is larger than {MAX_HEAD_BYTES // 1024} KiB"
        self.head_too_large_reply = raw_reply(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, message)

    def admit(self) -> Admission:
        """Count a new connection in and say what becomes of it."""
        if self.served < self.limits.max_connections:
            self.served += 1
            return Admission.SERVE
        if time.monotonic() - self._warned_at > WARN_EVERY_S:
            self._warned_at = time.monotonic()
            log.warning(
                "%d connections are open, the limit (server.max_connections): new ones get 503",
                self.served,
            )
        if self.refused < self.limits.overflow:
            self.refused += 1
            return Admission.REFUSE
        return Admission.DROP

    def release(self, admission: Admission) -> None:
        """Count a closed connection out."""
        if admission is Admission.SERVE:
            self.served -= 1
        elif admission is Admission.REFUSE:
            self.refused -= 1


def raw_reply(status: HTTPStatus, message: str) -> bytes:
    """A complete HTTP/1.1 error response, for when no request exists to answer."""
    body = error_body(message)
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body
