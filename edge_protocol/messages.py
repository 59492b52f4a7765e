"""What devices publish (`state`, `events`, `telemetry`) and what the registry answers (`acks`).

Device messages are plain JSON, not signed, with a `schema` number; `parse_device_message` is
what the registry applies before storing any of them. The registry answers the numbered ones
(events and telemetry carry `msg_seq`) with `acks`: the ranges it has stored. The kinds of
lifecycle events and the phases of an update are enums, so a new one is added here or nowhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from edge_protocol.errors import MessageFormatError
from edge_protocol.fields import FieldReader, format_time
from edge_protocol.topics import KIND_EVENTS, KIND_STATE, KIND_TELEMETRY
from edge_protocol.trust import utc_now

MESSAGE_SCHEMA = 1
MAX_MESSAGE_BYTES = 256 * 1024  # telemetry with per-input feature summaries stays far below
MAX_ACK_RANGES = 256  # ranges in one acks message: about 10 KiB at most
MAX_MSG_SEQ = 2**63 - 1  # what the registry's BIGINT columns hold


class EventKind(StrEnum):
    """An update lifecycle event an agent publishes on its `events` topic (docs/protocol.md)."""

    RECEIVED = "received"
    VERIFIED = "verified"
    REJECTED = "rejected"
    DOWNLOADING = "downloading"
    ACTIVATED = "activated"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class UpdatePhase(StrEnum):
    """Where the update of one model stands; `state` carries it per model (docs/agent.md)."""

    IDLE = "idle"
    VERIFYING = "verifying"
    DOWNLOADING = "downloading"
    LOADING = "loading"  # load, warm-up and the release's self-test
    PROBATION = "probation"
    FAILED = "failed"


EVENT_KINDS = tuple(EventKind)
UPDATE_PHASES = tuple(UpdatePhase)


def state_payload(
    device_id: str,
    *,
    agent_version: str,
    models: dict[str, dict[str, Any]],
    trust: dict[str, Any],
    now: datetime | None = None,
    telemetry_interval_s: float | None = None,
) -> bytes:
    """Encode an online `state` message (retained); see docs/protocol.md for the fields."""
    body: dict[str, Any] = {
        "schema": MESSAGE_SCHEMA,
        "device_id": device_id,
        "online": True,
        "timestamp": format_time(now or utc_now()),
        "agent_version": agent_version,
        "models": models,
        "trust": trust,
    }
    if telemetry_interval_s is not None:  # how often it reports: when to call it stale
        body["telemetry_interval_s"] = telemetry_interval_s
    return _encode(body)


def offline_payload(device_id: str) -> bytes:
    """Encode the `state` will the broker publishes when the device vanishes."""
    return _encode({"schema": MESSAGE_SCHEMA, "device_id": device_id, "online": False})


def event_payload(
    device_id: str,
    event: str,
    *,
    model: str | None = None,
    version: int | None = None,
    now: datetime | None = None,
    **details: Any,
) -> bytes:
    """Encode one lifecycle event; `details` carries reason, detail, progress, seq."""
    if event not in EVENT_KINDS:
        raise MessageFormatError(f"{event!r} is not an event kind")
    body = {
        "schema": MESSAGE_SCHEMA,
        "device_id": device_id,
        "event": event,
        "timestamp": format_time(now or utc_now()),
        "model": model,
        "version": version,
        **details,
    }
    return _encode({k: v for k, v in body.items() if v is not None})


def telemetry_payload(device_id: str, body: dict[str, Any], now: datetime | None = None) -> bytes:
    """Encode a telemetry report; `body` holds the measurements (docs/protocol.md)."""
    header = {
        "schema": MESSAGE_SCHEMA,
        "device_id": device_id,
        "timestamp": format_time(now or utc_now()),
    }
    return _encode({**body, **header})


def parse_device_message(kind: str, topic_device_id: str, payload: bytes) -> dict[str, Any]:
    """Validate a device message received on `.../devices/{topic_device_id}/{kind}`."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MessageFormatError(f"{kind} message of {len(payload)} bytes exceeds the cap")
    try:
        body = json.loads(payload, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MessageFormatError(f"{kind} message is not JSON: {e}") from e
    r = FieldReader(body, kind, MessageFormatError)
    if r.integer("schema", minimum=1) != MESSAGE_SCHEMA:
        raise MessageFormatError(f"{kind}.schema: this registry reads schema {MESSAGE_SCHEMA}")
    if r.string("device_id", name=True) != topic_device_id:
        raise MessageFormatError(f"{kind}.device_id does not match the topic's device")
    if kind == KIND_STATE:
        if r.boolean("online"):
            r.time("timestamp")
            r.obj("models")
            r.obj("trust")
    elif kind == KIND_EVENTS:
        r.time("timestamp")
        if r.string("event", max_length=32) not in EVENT_KINDS:
            raise MessageFormatError(f"events.event: expected one of {', '.join(EVENT_KINDS)}")
    elif kind == KIND_TELEMETRY:
        r.time("timestamp")
    else:
        raise MessageFormatError(f"{kind!r} is not a device message kind")
    return body  # type: ignore[no-any-return]


def ack_payload(device_id: str, epoch: str, ranges: list[tuple[int, int]]) -> bytes:
    """Encode an `acks` message: the `msg_seq` ranges (inclusive) of `epoch` the registry has."""
    if not 0 < len(ranges) <= MAX_ACK_RANGES:
        raise MessageFormatError(f"an acks message carries 1 to {MAX_ACK_RANGES} ranges")
    body = {
        "schema": MESSAGE_SCHEMA,
        "device_id": device_id,
        "msg_epoch": epoch,
        "ranges": [[first, last] for first, last in ranges],
    }
    return _encode(body)


@dataclass(frozen=True)
class Ack:
    """A parsed `acks` message."""

    epoch: str
    ranges: tuple[tuple[int, int], ...]  # inclusive, ascending, not overlapping

    def covers(self, seq: int) -> bool:
        """Whether `seq` lies in one of the ranges."""
        return any(first <= seq <= last for first, last in self.ranges)


def parse_ack(device_id: str, payload: bytes) -> Ack:
    """Validate an `acks` message received on `.../devices/{device_id}/acks`."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MessageFormatError(f"acks message of {len(payload)} bytes exceeds the cap")
    try:
        body = json.loads(payload, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise MessageFormatError(f"acks message is not JSON: {e}") from e
    r = FieldReader(body, "acks", MessageFormatError)
    if r.integer("schema", minimum=1) != MESSAGE_SCHEMA:
        raise MessageFormatError(f"acks.schema: this agent reads schema {MESSAGE_SCHEMA}")
    if r.string("device_id", name=True) != device_id:
        raise MessageFormatError("acks.device_id does not match the topic's device")
    epoch = r.string("msg_epoch", max_length=64)
    ranges = body.get("ranges")
    if not isinstance(ranges, list) or not 0 < len(ranges) <= MAX_ACK_RANGES:
        raise MessageFormatError(f"acks.ranges: expected a list of 1 to {MAX_ACK_RANGES} ranges")
    parsed: list[tuple[int, int]] = []
    for entry in ranges:
        if not (isinstance(entry, list) and len(entry) == 2 and all(_seq(n) for n in entry)):
            raise MessageFormatError("acks.ranges: each range is [first, last], msg_seq numbers")
        first, last = entry
        if first > last or (parsed and first <= parsed[-1][1]):
            raise MessageFormatError("acks.ranges: expected ascending ranges that do not overlap")
        parsed.append((first, last))
    return Ack(epoch, tuple(parsed))


def _seq(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_MSG_SEQ


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _refuse_constant(literal: str) -> Any:
    raise MessageFormatError(f"{literal} is not a JSON value")
