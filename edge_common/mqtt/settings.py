"""What a connection needs to know: where the broker is and who logs in."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol


class ConnectionSettings(Protocol):
    """Where the broker is and who logs in: the agent's `[mqtt]`, or the registry's."""

    @property
    def url(self) -> str: ...  # mqtt://host[:port] or mqtts://host[:port], no credentials
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def ca_file(self) -> str | os.PathLike[str] | None: ...
    @property
    def client_cert(self) -> str | os.PathLike[str] | None: ...
    @property
    def client_key(self) -> str | os.PathLike[str] | None: ...
    @property
    def keepalive_s(self) -> int: ...


@dataclass(frozen=True)
class BrokerLogin:
    """ConnectionSettings for a caller without a settings type of its own (the registry)."""

    url: str
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    keepalive_s: int = 30
