"""The on-disk spool: order, acknowledgement, the cap's drop order, restarts and torn files.

Real files in a temporary state directory; a "restart" is a new Spool on the same directory,
which is all an agent restart does to it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.uplink.spool import HEADER, KIND_EVENTS, KIND_TELEMETRY, SEQ_BLOCK, Spool

PAYLOAD = 100  # bytes per test message, so that the cap counts messages
RECORD = HEADER.size + PAYLOAD


def message(seq: int) -> bytes:
    """A payload of exactly PAYLOAD bytes that names its msg_seq."""
    return json.dumps({"msg_seq": seq}).encode().ljust(PAYLOAD)


def fill(spool: Spool, kinds: str) -> list[int]:
    """Append one message per letter (e: event, t: telemetry); return their msg_seq."""
    by_letter = {"e": KIND_EVENTS, "t": KIND_TELEMETRY}
    return [spool.append(by_letter[letter], message) for letter in kinds]


def contents(spool: Spool) -> list[tuple[int, str]]:
    """(msg_seq, kind) of everything pending, oldest first, read back from disk."""
    records = spool.take(10_000)
    spool.release(r.seq for r in records)
    assert all(json.loads(r.payload)["msg_seq"] == r.seq for r in records)
    return [(r.seq, r.kind) for r in records]


def files(directory: Path) -> list[str]:
    """The message files in the spool directory."""
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith((".", "meta")))


def test_messages_come_back_in_order_and_go_when_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10 * RECORD)
    seqs = fill(spool, "tetet")
    assert seqs == [1, 2, 3, 4, 5]

    window = spool.take(3)
    assert [r.seq for r in window] == [1, 2, 3]
    assert [r.seq for r in spool.take(3)] == [4, 5], "taken messages are not handed out twice"
    spool.ack([1, 2])
    spool.release([3, 4, 5])  # not acknowledged: they stay, first in line

    assert [seq for seq, _ in contents(spool)] == [3, 4, 5]
    assert len(files(tmp_path)) == 3
    assert spool.stats()["pending_bytes"] == 3 * RECORD


def test_the_spool_and_its_sequence_survive_a_restart(tmp_path: Path) -> None:
    first = Spool(tmp_path, max_bytes=10 * RECORD)
    fill(first, "tee")
    first.ack([1])

    again = Spool(tmp_path, max_bytes=10 * RECORD)

    assert contents(again) == [(2, KIND_EVENTS), (3, KIND_EVENTS)]
    assert again.epoch == first.epoch
    later = fill(again, "t")[0]
    assert later > 3, "a msg_seq is never used twice"
    assert later == SEQ_BLOCK + 1, "the restart starts after the block the first run reserved"


@pytest.mark.parametrize(
    "keep",
    [
        pytest.param(0, id="empty-file"),
        pytest.param(HEADER.size - 3, id="torn-header"),
        pytest.param(HEADER.size + PAYLOAD // 2, id="torn-payload"),
    ],
)
def test_a_torn_last_record_is_skipped_and_the_earlier_ones_kept(tmp_path: Path, keep: int) -> None:
    spool = Spool(tmp_path, max_bytes=10 * RECORD)
    fill(spool, "etet")
    last = tmp_path / files(tmp_path)[-1]
    last.write_bytes(last.read_bytes()[:keep])  # what a write cut short by a crash leaves

    again = Spool(tmp_path, max_bytes=10 * RECORD)

    assert contents(again) == [(1, KIND_EVENTS), (2, KIND_TELEMETRY), (3, KIND_EVENTS)]
    assert again.stats()["corrupt"] == 1
    assert not last.exists()
    assert again.stats()["pending_bytes"] == 3 * RECORD


def test_a_damaged_record_is_skipped_when_read(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10 * RECORD)
    fill(spool, "ttt")
    middle = tmp_path / files(tmp_path)[1]
    data = bytearray(middle.read_bytes())
    data[-1] ^= 0x01  # same length, one bit flipped: only the CRC can tell
    middle.write_bytes(bytes(data))

    assert [seq for seq, _ in contents(spool)] == [1, 3]
    assert spool.stats()["corrupt"] == 1


def test_temp_files_left_by_a_kill_are_removed_and_never_sent(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10 * RECORD)
    fill(spool, "t")
    debris = tmp_path / ".00000000000000000002.telemetry.abc123.tmp"
    debris.write_bytes(b"half a message")

    again = Spool(tmp_path, max_bytes=10 * RECORD)

    assert not debris.exists()
    assert contents(again) == [(1, KIND_TELEMETRY)]
    assert again.stats()["corrupt"] == 0


# Drop order at a cap of three messages: the oldest telemetry goes first, events last, and new
# telemetry never pushes out an event. (letters appended, what stays, telemetry and events lost)
CAP_CASES = [
    pytest.param("ttt", "ttt", 0, 0, id="at-the-cap"),
    pytest.param("tttt", "-ttt", 1, 0, id="oldest-telemetry-first"),
    pytest.param("etttt", "e--tt", 2, 0, id="events-stay"),
    pytest.param("tetee", "-e-ee", 2, 0, id="event-pushes-telemetry"),
    pytest.param("eeet", "eee-", 1, 0, id="telemetry-never-pushes-an-event"),
    pytest.param("eeee", "-eee", 0, 1, id="oldest-event-last"),
    pytest.param("teeee", "--eee", 1, 1, id="telemetry-before-events"),
]


@pytest.mark.parametrize(("kinds", "kept", "lost_telemetry", "lost_events"), CAP_CASES)
def test_over_the_cap_the_drops_follow_the_order_and_are_counted_exactly(
    tmp_path: Path, kinds: str, kept: str, lost_telemetry: int, lost_events: int
) -> None:
    spool = Spool(tmp_path, max_bytes=3 * RECORD)
    seqs = fill(spool, kinds)

    expected = [
        (seq, KIND_EVENTS if letter == "e" else KIND_TELEMETRY)
        for seq, letter in zip(seqs, kept, strict=True)
        if letter != "-"
    ]
    assert contents(spool) == expected
    stats = spool.stats()
    assert (stats["dropped_telemetry"], stats["dropped_events"]) == (lost_telemetry, lost_events)
    assert len(seqs) - len(expected) == lost_telemetry + lost_events
    again = Spool(tmp_path, max_bytes=3 * RECORD)
    assert again.stats()["dropped_telemetry"] == lost_telemetry, "counters survive a restart"
    assert again.stats()["dropped_events"] == lost_events


def test_messages_being_sent_are_not_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=2 * RECORD)
    fill(spool, "tt")
    in_flight = spool.take(1)  # the sender is waiting for the PUBACK of msg_seq 1

    fill(spool, "t")

    assert [r.seq for r in in_flight] == [1]
    spool.ack([1])
    assert contents(spool) == [(3, KIND_TELEMETRY)]
    assert spool.stats()["dropped_telemetry"] == 1  # msg_seq 2, not the one being sent


def test_a_message_larger_than_the_cap_is_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=RECORD - 1)
    fill(spool, "e")
    assert contents(spool) == []
    assert spool.stats()["dropped_events"] == 1


def test_an_unreadable_meta_file_starts_a_new_sequence_above_the_files(tmp_path: Path) -> None:
    first = Spool(tmp_path, max_bytes=10 * RECORD)
    fill(first, "tt")
    (tmp_path / "meta.json").write_text("{not json")

    again = Spool(tmp_path, max_bytes=10 * RECORD)

    assert again.epoch != first.epoch
    assert [seq for seq, _ in contents(again)] == [1, 2]
    assert fill(again, "t") == [3]
