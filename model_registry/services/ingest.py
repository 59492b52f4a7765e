"""Storing what devices report: state, events and telemetry from the broker.

Device messages are claims of an authenticated MQTT client (docs/protocol.md section 8). A
message that does not parse, breaks the field rules of `device_messages`, names another device
than its topic, or comes from a device the registry never provisioned is counted and dropped;
so is one over its device's rate (`ingest_limits`). Nothing a device sends can stop the ingest,
fill the disk at its own pace, or flood the log.

Messages are stored in batches: whatever has arrived while the previous batch was being written
goes to storage in one transaction, so a fleet reporting at once costs a few commits, not one
per message, while a lone message is stored at once.

After the commit, the numbers of what was stored, or was already stored (a resend), go into
`acks` (`model_registry.services.acks`), which tells each device what it may forget; so do the
numbers of messages refused for good. What is dropped for a rate, an overload or a storage
error is not acknowledged: the device sends it again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from edge_protocol import Topics, format_time
from edge_protocol.errors import FormatError
from edge_protocol.messages import parse_device_message
from edge_protocol.topics import KIND_EVENTS, KIND_STATE, KIND_TELEMETRY
from model_registry.mqtt.acl import REGISTRY_SHARE_GROUP
from model_registry.mqtt.client import MqttMessage
from model_registry.services.acks import AckBook
from model_registry.services.context import RegistryContext
from model_registry.services.device_messages import MessageLimits, clean_message, clean_numbering
from model_registry.services.ingest_limits import DeviceRateLimiter, DropLog, IngestQueue
from model_registry.statistics.points import points_from_telemetry
from model_registry.statistics.resources import point_from_telemetry
from model_registry.storage import DUPLICATE, STORED, DeviceReport

log = logging.getLogger(__name__)

MAX_BATCH = 500  # messages per transaction: large enough for bursts, small enough to stay quick
ERROR_EVENTS = frozenset({"rejected", "failed", "rolled_back"})
_ERROR_FIELDS = ("event", "model", "version", "reason", "detail")

# Why a message was dropped: the label of model_registry_ingest_dropped_total.
BAD_TOPIC = "bad_topic"  # not a device message topic of this prefix
MALFORMED = "malformed"  # not JSON, too big, too deep, or not the schema
FOREIGN = "foreign"  # names another device than its topic does
STORAGE_FAILED = "storage_error"  # the database refused it (logged)
RATE_LIMITED = "rate_limited"  # over its device's token buckets ([ingest] in registry.toml)
OVERLOADED = "overloaded"  # the queue to the database holds [ingest] backlog_mib already
WILL_BYTES = 512  # a state this small may be the broker's offline will, which always passes


class DeviceIngest:
    """Validates device messages and stores them; counts what it stores and drops, and why."""

    def __init__(self, ctx: RegistryContext, topics: Topics) -> None:
        self._ctx = ctx
        self._topics = topics
        self.dropped: Counter[str] = Counter()  # by reason, including storage outcomes
        self.stored: Counter[str] = Counter()  # by kind
        # Fields of telemetry's per-version objects left out of the version points for not
        # being counts (a negative bin count), by field name; the report itself is stored.
        self.detail_dropped: Counter[str] = Counter()
        self.backlog = 0  # messages received but not yet stored
        limits = ctx.config.ingest
        self.limits = MessageLimits.from_config(limits)
        self.limiter = DeviceRateLimiter(limits)
        self.drop_log = DropLog(limits.drop_log_interval_s)
        # What the MQTT connection delivers into: through `admit`, and bounded in bytes.
        self.queue = IngestQueue(self.admit, limits.backlog_mib * 1024 * 1024, self.overloaded)
        self.acks = AckBook()  # what to acknowledge to the devices (sent by `AckSender`)

    def subscriptions(self, *, shared: bool = False) -> list[str]:
        """The topic filters to subscribe to; `shared`: as a member of the replicas' group.

        A shared subscription hands each event and telemetry message to one member of the
        group, so replicas on one database do not each store it (idempotent ingest would drop
        the copies anyway). The state stays a plain subscription: brokers send no retained
        messages on shared ones, and a replica that starts must get every device's current
        state; storing the same latest state twice changes nothing.
        """
        group = f"$share/{REGISTRY_SHARE_GROUP}/" if shared else ""
        return [
            self._topics.device_messages(KIND_STATE),
            group + self._topics.device_messages(KIND_EVENTS),
            group + self._topics.device_messages(KIND_TELEMETRY),
        ]

    async def run(self, messages: asyncio.Queue[MqttMessage]) -> None:
        """Store messages from the queue until cancelled, a batch of what has arrived at a time."""
        while True:
            try:
                async with asyncio.timeout(self.drop_log.interval_s):
                    first = await messages.get()
            except TimeoutError:  # quiet: say what the last interval dropped, if anything
                self.drop_log.flush()
                continue
            batch = [first]
            while len(batch) < MAX_BATCH and not messages.empty():
                batch.append(messages.get_nowait())
            self.backlog = messages.qsize() + len(batch)
            try:
                await self.handle_batch(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad batch must not end the ingest for good
                log.exception("could not store %d device messages", len(batch))
                self.dropped[STORAGE_FAILED] += len(batch)
            self.backlog = messages.qsize()
            self.drop_log.flush()

    async def handle(self, message: MqttMessage) -> None:
        """Store one message, or count it as dropped with the reason."""
        await self.handle_batch([message])

    async def handle_batch(self, messages: Sequence[MqttMessage]) -> None:
        """Store the messages that pass the checks, in order, in one transaction."""
        reports = [r for r in (self._check(m) for m in messages) if r is not None]
        if not reports:
            return
        try:
            outcomes = await self._ctx.storage.add_device_reports(reports)
        except Exception:
            # Find the one report the database refuses instead of losing its whole batch.
            log.exception("a batch of %d device reports failed; storing one by one", len(reports))
            outcomes = [await self._store_alone(report) for report in reports]
        for report, outcome in zip(reports, outcomes, strict=True):
            if outcome == STORED:
                self.stored[report.kind] += 1
            elif outcome == DUPLICATE:  # a resend: normal, nobody to blame
                self.dropped[outcome] += 1
            else:
                self._drop(outcome, report.device_id)
                continue
            if report.msg_epoch is not None and report.msg_seq is not None:
                self.acks.note(report.device_id, report.msg_epoch, report.msg_seq)

    async def _store_alone(self, report: DeviceReport) -> str:
        try:
            return (await self._ctx.storage.add_device_reports([report]))[0]
        except Exception:
            log.exception("could not store a %s message of %s", report.kind, report.device_id)
            return STORAGE_FAILED

    def _check(self, message: MqttMessage) -> DeviceReport | None:
        """The report to store, or None after counting why the message is dropped."""
        try:
            ref = self._topics.parse(message.topic)
        except FormatError:
            self.dropped[BAD_TOPIC] += 1
            return None
        if ref.kind not in (KIND_STATE, KIND_EVENTS, KIND_TELEMETRY):
            self.dropped[BAD_TOPIC] += 1
            return None
        payload = message.payload
        if not payload:
            return None  # a cleared retained state: nothing to store
        try:
            body = clean_message(
                ref.kind, parse_device_message(ref.kind, ref.name, payload), self.limits
            )
        except (ValueError, RecursionError) as e:  # json gives up on deep nesting that way
            reason = _drop_reason(ref.name, payload)
            self._drop(reason, ref.name)
            log.debug("dropped a %s message on %s: %s", reason, message.topic, e)
            if reason == MALFORMED and (numbering := _numbering(ref.name, payload)) is not None:
                self.acks.note(ref.name, *numbering)  # the same bytes again would fail again
            return None
        return _report(ref.kind, ref.name, body, self._ctx.clock(), self.detail_dropped)

    def admit(self, message: MqttMessage) -> bool:
        """Whether a message just received fits its device's rate; counts it if not.

        Called as the message is queued, so a flood is dropped before it takes memory or
        parsing. The broker's offline will passes even then (once per WILL_INTERVAL_S): the
        registry must not go on showing a vanished device online because it was noisy.
        """
        try:
            ref = self._topics.parse(message.topic)
        except FormatError:
            return True  # counted as bad_topic when it is handled
        if self.limiter.allow(ref.name, len(message.payload)):
            return True
        if _is_will(ref.kind, message) and self.limiter.allow_will(ref.name):
            return True
        self._drop(RATE_LIMITED, ref.name)
        return False

    def overloaded(self, message: MqttMessage) -> None:
        """Count a message refused because the queue to the database is full."""
        self.dropped[OVERLOADED] += 1
        with contextlib.suppress(FormatError):
            self.drop_log.note(self._topics.parse(message.topic).name, OVERLOADED)

    def _drop(self, reason: str, device_id: str) -> None:
        self.dropped[reason] += 1
        self.drop_log.note(device_id, reason)


def _report(
    kind: str,
    device_id: str,
    body: dict[str, Any],
    now: datetime,
    detail_dropped: Counter[str] | None = None,
) -> DeviceReport:
    if kind == KIND_STATE:
        return DeviceReport(device_id, kind, now, body, online=bool(body.get("online")))
    error = None
    if kind == KIND_EVENTS and body.get("event") in ERROR_EVENTS:
        error = {k: body[k] for k in _ERROR_FIELDS if k in body} | {"at": format_time(now)}
    telemetry = kind == KIND_TELEMETRY
    points = points_from_telemetry(device_id, now, body, detail_dropped) if telemetry else ()
    resources = point_from_telemetry(device_id, now, body) if telemetry else None
    epoch, seq = body.get("msg_epoch"), body.get("msg_seq")
    if isinstance(epoch, str) and isinstance(seq, int) and not isinstance(seq, bool):
        return DeviceReport(
            device_id,
            kind,
            now,
            body,
            msg_epoch=epoch,
            msg_seq=seq,
            error=error,
            points=points,
            resources=resources,
        )
    # Unnumbered: always stored.
    return DeviceReport(device_id, kind, now, body, error=error, points=points, resources=resources)


def _numbering(topic_device_id: str, payload: bytes) -> tuple[str, int] | None:
    """(msg_epoch, msg_seq) of a refused message that is an object of the topic's device."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict) or body.get("device_id") != topic_device_id:
        return None
    epoch, seq = body.get("msg_epoch"), body.get("msg_seq")
    try:
        numbering = clean_numbering(epoch, seq)
    except ValueError:
        return None
    return numbering


def _is_will(kind: str, message: MqttMessage) -> bool:
    if kind != KIND_STATE or len(message.payload) > WILL_BYTES:
        return False
    try:
        body = json.loads(message.payload)
    except (ValueError, RecursionError):
        return False
    return isinstance(body, dict) and body.get("online") is False


def _drop_reason(topic_device_id: str, payload: bytes) -> str:
    """FOREIGN when the payload is an object naming another device, else MALFORMED."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):  # ValueError: also an integer of over 4300 digits
        return MALFORMED
    if not isinstance(body, dict):
        return MALFORMED
    claimed = body.get("device_id")
    return FOREIGN if isinstance(claimed, str) and claimed != topic_device_id else MALFORMED
