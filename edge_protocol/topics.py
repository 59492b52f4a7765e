"""MQTT topic names: what each level of `{prefix}/...` addresses.

Both sides build every topic through `Topics`, so a prefix change or a new topic level happens
here once. What travels on the device topics is in `edge_protocol.messages`.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_protocol.errors import TopicError
from edge_protocol.fields import NAME_PATTERN, SHA256_PATTERN, is_valid_name

DEFAULT_PREFIX = "edge/v1"

KIND_ROOT = "root"
KIND_RELEASE = "release"
KIND_ARTIFACT = "artifact"
KIND_ASSIGNMENT = "assignment"
KIND_STATE = "state"
KIND_EVENTS = "events"
KIND_TELEMETRY = "telemetry"
KIND_ACKS = "acks"
DEVICE_MESSAGE_KINDS = (KIND_STATE, KIND_EVENTS, KIND_TELEMETRY)


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
