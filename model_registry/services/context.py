"""The registry's long-lived parts, assembled once and handed to every service."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from edge_protocol import format_time, utc_now
from edge_protocol.trust import Clock
from model_registry.config import RegistryConfig
from model_registry.errors import UnavailableError
from model_registry.mqtt.broker_admin import BrokerAccess
from model_registry.mqtt.publisher import Publisher
from model_registry.storage import BlobStore, Storage
from model_registry.trust.signing import ReleaseSigner


class BrokerLink(Protocol):
    """The registry's own connection to its broker, as the API reports it."""

    @property
    def connected(self) -> bool:
        """Whether the connection is up right now."""

    since: datetime | None  # when it last came up or went down; None before the first connect


@dataclass
class RegistryContext:
    """Configuration, storage, blobs, the release signer and (when connected) the publisher."""

    config: RegistryConfig
    storage: Storage
    blobs: BlobStore
    signer: ReleaseSigner
    publisher: Publisher | None = None
    broker_access: BrokerAccess | None = None  # adds and removes device logins on the broker
    broker_url: str | None = None  # the broker `serve` actually uses (flags may override config)
    broker_link: BrokerLink | None = None  # the registry's MQTT connection, None when MQTT is off
    api_url: str | None = None  # where `serve` actually listens
    clock: Clock = field(default=utc_now)
    # Serializes everything that reads and rewrites device assignments or the broker's
    # retained state (deploys, renewals, resyncs), so none acts on a stale view of another.
    state_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def require_broker(self, refused: str) -> None:
        """Refuse (UnavailableError, saying `refused`) while the broker link is known down.

        What must reach devices as retained messages (assignments, a cleared assignment) is
        published at QoS 1 and waits for the broker's acknowledgement under `state_lock`: with
        the broker down that wait would last the whole outage and block every other change.
        """
        link = self.broker_link
        if self.publisher is None or link is None or link.connected:
            return
        since = (
            "" if link.since is None else f" since {format_time(link.since.replace(microsecond=0))}"
        )
        raise UnavailableError(
            f"the registry is not connected to its MQTT broker{since}, so no device can be "
            f"told: {refused}; check the broker and the registry log, then try again"
        )
