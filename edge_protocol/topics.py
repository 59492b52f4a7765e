"""MQTT topic names and the payload schemas of the device-published messages.

Both sides build every topic through `Topics`, so a prefix change or a new topic level happens
here once. Device messages (`state`, `events`, `telemetry`) are plain JSON, not signed, with a
`schema` number; `parse_device_message` is what the registry applies before storing any of them.
The registry answers the numbered ones with `acks` (`ack_payload`, `parse_ack`): what it stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edge_protocol.errors import MessageFormatError, TopicError
from edge_protocol.fields import (
    NAME_PATTERN,
    SHA256_PATTERN,
    FieldReader,
    format_time,
    is_valid_name,
)
from edge_protocol.trust import utc_now

DEFAULT_PREFIX = "edge/v1"
MESSAGE_SCHEMA = 1
MAX_MESSAGE_BYTES = 256 * 1024  # telemetry with per-input feature summaries stays far below

KIND_ROOT = "root"
KIND_RELEASE = "release"
KIND_ARTIFACT = "artifact"
KIND_ASSIGNMENT = "assignment"
KIND_STATE = "state"
KIND_EVENTS = "events"
KIND_TELEMETRY = "telemetry"
KIND_ACKS = "acks"
DEVICE_MESSAGE_KINDS = (KIND_STATE, KIND_EVENTS, KIND_TELEMETRY)
MAX_ACK_RANGES = 256  # ranges in one acks message: about 10 KiB at most
MAX_MSG_SEQ = 2**63 - 1  # what the registry's BIGINT columns hold

# Update lifecycle events an agent publishes on its `events` topic (docs/protocol.md).
EVENT_KINDS = (
    "received", "verified", "rejected", "downloading", "activated", "rolled_back", "failed",
)  # fmt: skip
# Where an update of one model stands; `state` carries it per model.
UPDATE_PHASES = (
    "idle", "verifying", "downloading", "loading", "selftest", "probation", "failed",
)  # fmt: skip


@dataclass(frozen=True)
class TopicRef:
    """What a concrete topic addresses: its kind and the identifiers in it."""

    kind: str
    name: str  # model name, device id or artifact sha256, by kind; "" for root
    number: int | None = None  # root version, release version or chunk index


@dataclass(frozen=True)
class Topics:
    """Builds and parses the topics under one prefix (default `edge/v1`)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        levels = self.prefix.split("/")
        if any(not level or set(level) & {"+", "#"} for level in levels) or self.prefix[0] == "$":
            raise TopicError(f"topic prefix {self.prefix!r} must be non-empty levels, no wildcards")

    def root(self, version: int) -> str:
        """Retained signed root document of `version`."""
        return f"{self.prefix}/trust/root/{_positive(version)}"

    def release(self, model: str, version: int) -> str:
        """Retained signed release of `model` at `version`."""
        return f"{self.prefix}/releases/{_name(model)}/{_positive(version)}"

    def artifact_chunk(self, sha256: str, index: int) -> str:
        """Retained raw bytes of chunk `index` (from 0) of the artifact `sha256`."""
        if not SHA256_PATTERN.fullmatch(sha256) or index < 0:
            raise TopicError(f"bad artifact chunk address {sha256!r}/{index}")
        return f"{self.prefix}/artifacts/{sha256}/{index}"

    def assignment(self, device_id: str) -> str:
        """Retained signed assignment of one device."""
        return f"{self.prefix}/devices/{_name(device_id)}/assignment"

    def state(self, device_id: str) -> str:
        """Retained device state (the broker publishes the offline will here)."""
        return f"{self.prefix}/devices/{_name(device_id)}/state"

    def events(self, device_id: str) -> str:
        """Update lifecycle events of one device."""
        return f"{self.prefix}/devices/{_name(device_id)}/events"

    def telemetry(self, device_id: str) -> str:
        """Periodic telemetry of one device."""
        return f"{self.prefix}/devices/{_name(device_id)}/telemetry"

    def acks(self, device_id: str) -> str:
        """What the registry has stored of one device's events and telemetry (registry only)."""
        return f"{self.prefix}/devices/{_name(device_id)}/acks"

    def all_roots(self) -> str:
        """Subscription filter for every root version."""
        return f"{self.prefix}/trust/root/+"

    def model_releases(self, model: str) -> str:
        """Subscription filter for every release of `model`."""
        return f"{self.prefix}/releases/{_name(model)}/+"

    def device_messages(self, kind: str) -> str:
        """Subscription filter for one kind of device message from every device."""
        if kind not in DEVICE_MESSAGE_KINDS:
            raise TopicError(f"{kind!r} is not a device message kind")
        return f"{self.prefix}/devices/+/{kind}"

    def parse(self, topic: str) -> TopicRef:
        """Tell what a concrete topic addresses, refusing anything outside the scheme."""
        if not topic.startswith(self.prefix + "/"):
            raise TopicError(f"topic {topic!r} is not under prefix {self.prefix!r}")
        parts = topic[len(self.prefix) + 1 :].split("/")
        match parts:
            case ["trust", "root", version]:
                return TopicRef(KIND_ROOT, "", _number(version, topic))
            case ["releases", model, version] if is_valid_name(model):
                return TopicRef(KIND_RELEASE, model, _number(version, topic))
            case ["artifacts", sha256, index] if SHA256_PATTERN.fullmatch(sha256):
                return TopicRef(KIND_ARTIFACT, sha256, _number(index, topic, minimum=0))
            case ["devices", device_id, kind] if is_valid_name(device_id) and kind in (
                KIND_ASSIGNMENT,
                KIND_ACKS,
                *DEVICE_MESSAGE_KINDS,
            ):
                return TopicRef(kind, device_id)
        raise TopicError(f"topic {topic!r} is not part of the protocol")


def _name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise TopicError(f"{value!r} cannot be a topic level (letters, digits, '.', '_', '-')")
    return value


def _positive(value: int) -> int:
    if value < 1:
        raise TopicError(f"version {value} must be >= 1")
    return value


def _number(text: str, topic: str, minimum: int = 1) -> int:
    # Only plain decimal digits: "01" or "+1" would give two topics for one document.
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise TopicError(f"topic {topic!r} has a malformed number {text!r}")
    value = int(text)
    if value < minimum:
        raise TopicError(f"topic {topic!r} has a number below {minimum}")
    return value


# --- device message payloads --------------------------------------------------------------


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
