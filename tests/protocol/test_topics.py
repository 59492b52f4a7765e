"""Topic names and device message payloads."""

from __future__ import annotations

import json

import pytest

from edge_protocol import Topics
from edge_protocol.errors import MessageFormatError, TopicError
from edge_protocol.messages import (
    MAX_ACK_RANGES,
    ack_payload,
    event_payload,
    offline_payload,
    parse_ack,
    parse_device_message,
    state_payload,
    telemetry_payload,
)

SHA = "ab" * 32
TOPICS = Topics()


def test_topics_follow_the_documented_layout() -> None:
    assert TOPICS.root(3) == "edge/v1/trust/root/3"
    assert TOPICS.release("iris", 2) == "edge/v1/releases/iris/2"
    assert TOPICS.artifact_chunk(SHA, 0) == f"edge/v1/artifacts/{SHA}/0"
    assert TOPICS.assignment("dev-1") == "edge/v1/devices/dev-1/assignment"
    assert TOPICS.state("dev-1") == "edge/v1/devices/dev-1/state"
    assert TOPICS.events("dev-1") == "edge/v1/devices/dev-1/events"
    assert TOPICS.telemetry("dev-1") == "edge/v1/devices/dev-1/telemetry"
    assert TOPICS.acks("dev-1") == "edge/v1/devices/dev-1/acks"
    assert TOPICS.device_messages("state") == "edge/v1/devices/+/state"
    assert Topics("fleet/a").root(1) == "fleet/a/trust/root/1"


@pytest.mark.parametrize(
    ("topic", "kind", "name", "number"),
    [
        ("edge/v1/trust/root/7", "root", "", 7),
        ("edge/v1/releases/iris/12", "release", "iris", 12),
        (f"edge/v1/artifacts/{SHA}/0", "artifact", SHA, 0),
        ("edge/v1/devices/d1/assignment", "assignment", "d1", None),
        ("edge/v1/devices/d1/telemetry", "telemetry", "d1", None),
        ("edge/v1/devices/d1/acks", "acks", "d1", None),
    ],
)
def test_parse_inverts_the_builders(topic: str, kind: str, name: str, number: int | None) -> None:
    ref = TOPICS.parse(topic)
    assert (ref.kind, ref.name, ref.number) == (kind, name, number)


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/trust/root/1",
        "edge/v1/trust/root/01",
        "edge/v1/trust/root/0",
        "edge/v1/trust/root/-1",
        "edge/v1/releases/iris",
        f"edge/v1/artifacts/{SHA.upper()}/0",
        "edge/v1/devices/d1/secrets",
        "edge/v1/devices/$SYS/state",
    ],
)
def test_parse_refuses_topics_outside_the_scheme(topic: str) -> None:
    with pytest.raises(TopicError):
        TOPICS.parse(topic)


@pytest.mark.parametrize("name", ["", "a/b", "a+", "#", "$x", "-lead", "x" * 129])
def test_names_that_would_break_topics_are_refused(name: str) -> None:
    with pytest.raises(TopicError):
        TOPICS.assignment(name)


@pytest.mark.parametrize("prefix", ["", "a//b", "a/+", "$SYS/x", "edge/#"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(TopicError):
        Topics(prefix)


def test_device_messages_round_trip() -> None:
    state = state_payload(
        "d1",
        agent_version="0.1.0",
        models={"iris": {"active": {"version": 2, "sha256": SHA}, "phase": "idle"}},
        trust={"root_version": 1, "assignment_seq": 4, "stale": False},
    )
    assert parse_device_message("state", "d1", state)["models"]["iris"]["active"]["version"] == 2
    assert parse_device_message("state", "d1", offline_payload("d1"))["online"] is False
    event = event_payload("d1", "rejected", model="iris", version=3, reason="chunk_hash")
    assert parse_device_message("events", "d1", event)["reason"] == "chunk_hash"
    telemetry = telemetry_payload("d1", {"interval_s": 30, "requests": 12})
    assert parse_device_message("telemetry", "d1", telemetry)["requests"] == 12


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("state", b"not json"),
        ("state", b"[]"),
        ("state", json.dumps({"schema": 1, "device_id": "d2", "online": False}).encode()),
        ("state", json.dumps({"schema": 9, "device_id": "d1", "online": False}).encode()),
        ("state", json.dumps({"schema": 1, "device_id": "d1", "online": True}).encode()),
        ("events", json.dumps({"schema": 1, "device_id": "d1", "event": "x"}).encode()),
        ("telemetry", b'{"schema": 1, "device_id": "d1", "timestamp": NaN}'),
        ("telemetry", b"{" + b" " * 300_000 + b"}"),
        ("secrets", json.dumps({"schema": 1, "device_id": "d1"}).encode()),
    ],
)
def test_malformed_or_foreign_device_messages_are_refused(kind: str, payload: bytes) -> None:
    with pytest.raises(MessageFormatError):
        parse_device_message(kind, "d1", payload)


def test_unknown_event_kinds_cannot_be_encoded() -> None:
    with pytest.raises(MessageFormatError):
        event_payload("d1", "exploded")


@pytest.mark.parametrize("value", ["dev\n", "a" * 63 + "\n"])
def test_a_trailing_newline_is_not_a_name(value: str) -> None:
    from edge_protocol.fields import is_valid_name

    assert not is_valid_name(value)
    with pytest.raises(TopicError):
        TOPICS.state(value)
    with pytest.raises(TopicError):
        TOPICS.artifact_chunk(SHA + "\n", 0)


def test_acks_round_trip() -> None:
    payload = ack_payload("d1", "9f2c4e1a0b7d3e55", [(3, 7), (9, 9)])
    assert json.loads(payload) == {
        "schema": 1, "device_id": "d1", "msg_epoch": "9f2c4e1a0b7d3e55", "ranges": [[3, 7], [9, 9]],
    }  # fmt: skip
    ack = parse_ack("d1", payload)
    assert (ack.epoch, ack.ranges) == ("9f2c4e1a0b7d3e55", ((3, 7), (9, 9)))
    assert [seq for seq in range(11) if ack.covers(seq)] == [3, 4, 5, 6, 7, 9]


def _ack(**changes: object) -> bytes:
    body = {"schema": 1, "device_id": "d1", "msg_epoch": "e1", "ranges": [[1, 2]], **changes}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        _ack(device_id="d2"),
        _ack(schema=2),
        _ack(msg_epoch=7),
        _ack(ranges=[]),
        _ack(ranges=[[2, 1]]),
        _ack(ranges=[[1, 5], [5, 6]]),
        _ack(ranges=[[3, 4], [1, 2]]),
        _ack(ranges=[[1, 2, 3]]),
        _ack(ranges=[[-1, 2]]),
        _ack(ranges=[[1, 2**63]]),
        _ack(ranges=[[True, 2]]),
        _ack(ranges=[[1.5, 2]]),
        _ack(ranges=[[2 * n, 2 * n] for n in range(MAX_ACK_RANGES + 1)]),
    ],
)
def test_malformed_or_foreign_acks_are_refused(payload: bytes) -> None:
    with pytest.raises(MessageFormatError):
        parse_ack("d1", payload)


def test_an_ack_carries_a_bounded_number_of_ranges() -> None:
    with pytest.raises(MessageFormatError):
        ack_payload("d1", "e1", [(2 * n, 2 * n) for n in range(MAX_ACK_RANGES + 1)])
    with pytest.raises(MessageFormatError):
        ack_payload("d1", "e1", [])
