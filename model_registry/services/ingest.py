"""Storing what devices report: state, events and telemetry from the broker.

Device messages are claims of an authenticated MQTT client (docs/protocol.md section 8). A
message that does not parse, names another device than its topic, or comes from a device the
registry never provisioned is counted and dropped; nothing a device sends can stop the ingest.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from edge_protocol import Topics
from edge_protocol.errors import FormatError
from edge_protocol.topics import KIND_EVENTS, KIND_STATE, KIND_TELEMETRY, parse_device_message
from model_registry.errors import NotFoundError
from model_registry.mqtt.client import MqttMessage
from model_registry.services.context import RegistryContext

log = logging.getLogger(__name__)


class DeviceIngest:
    """Validates device messages and stores them; counts what it drops and why."""

    def __init__(self, ctx: RegistryContext, topics: Topics) -> None:
        self._ctx = ctx
        self._topics = topics
        self.dropped: Counter[str] = Counter()
        self.stored: Counter[str] = Counter()

    def subscriptions(self) -> list[str]:
        """The topic filters to subscribe to."""
        return [self._topics.device_messages(k) for k in (KIND_STATE, KIND_EVENTS, KIND_TELEMETRY)]

    async def handle(self, message: MqttMessage) -> None:
        """Store one message, or count it as dropped with the reason."""
        try:
            ref = self._topics.parse(message.topic)
            if ref.kind not in (KIND_STATE, KIND_EVENTS, KIND_TELEMETRY):
                raise FormatError(f"{ref.kind} is not a device message")
            if not message.payload:
                return  # a cleared retained state: nothing to store
            body = parse_device_message(ref.kind, ref.name, message.payload)
            await self._store(ref.kind, ref.name, body)
        except (FormatError, NotFoundError) as e:
            reason = type(e).__name__
            self.dropped[reason] += 1
            log.debug("dropped a message on %s: %s", message.topic, e)
            return
        self.stored[ref.kind] += 1

    async def _store(self, kind: str, device_id: str, body: dict[str, Any]) -> None:
        storage, now = self._ctx.storage, self._ctx.clock()
        await storage.get_device(device_id)  # unknown devices raise NotFoundError
        if kind == KIND_STATE:
            await storage.record_state(device_id, body, bool(body.get("online")), now)
        elif kind == KIND_EVENTS:
            await storage.add_event(device_id, now, body)
        else:
            await storage.add_telemetry(device_id, now, body)
