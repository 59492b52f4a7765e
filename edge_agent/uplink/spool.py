"""The spool: events and telemetry waiting on disk until the registry acknowledges them.

One file per message, `spool/{msg_seq:020d}.{kind}`, written atomically (temp file, fsync,
rename, fsync the directory) and framed as `magic | length | crc32 | payload`:

* A kill at any instant leaves either the whole file or only a `.tmp` that the next start
  deletes. A file torn anyway (a filesystem without ordered writes, a bad sector, a truncation)
  fails its length or CRC check: that one message is skipped and counted as `corrupt`; the
  files around it are separate and cannot be harmed by it.
* A message goes through three states: queued (to be sent), in flight (published, waiting for
  the broker's PUBACK) and sent (the broker has it, the registry has not yet said it stored
  it). Acknowledging is deleting its file, once the registry's `acks` message names it
  (`acknowledge`), or on the PUBACK where the registry does not acknowledge (`ack`). A sent
  message not acknowledged by its deadline is queued again (`expire`): a broker that restarted
  without its state, or a registry that was not subscribed, cost a resend, not the message.
  The delete is not fsynced: a crash may resurrect the file and send it once more, with the
  same `msg_seq`. A delete the disk refuses is logged and the message forgotten all the same.
* Dropping one message is deleting one file, so the cap can drop the oldest telemetry first
  and events last without rewriting anything.

`msg_seq` is allocated here, strictly increasing per state directory: blocks of numbers are
reserved in `meta.json` before any number of the block is used, so no number is ever reused,
even after a crash (numbers a crash skips leave gaps; gaps are not losses). `meta.json` also
keeps the drop counters, so they survive restarts, and whether the registry has ever
acknowledged anything (from then on only its acks delete messages).
"""

from __future__ import annotations

import bisect
import heapq
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_agent.uplink.spool_record import HEADER, checked_size, encode_record, parse_record
from edge_common.files import TEMP_SUFFIX, write_atomic

__all__ = [
    "HEADER",
    "KINDS",
    "KIND_EVENTS",
    "KIND_TELEMETRY",
    "META_FILE",
    "SEQ_BLOCK",
    "SPOOL_DIR",
    "Spool",
    "SpoolCounters",
    "SpoolRecord",
    "encode_record",
]  # fmt: skip

log = logging.getLogger(__name__)

SPOOL_DIR = "spool"
META_FILE = "meta.json"
KIND_EVENTS = "events"
KIND_TELEMETRY = "telemetry"
KINDS = (KIND_EVENTS, KIND_TELEMETRY)
SEQ_BLOCK = 1024  # msg_seq numbers reserved per write of meta.json
_RECORD_NAME = re.compile(r"^(\d{20})\.(events|telemetry)$")


@dataclass(frozen=True)
class SpoolRecord:
    """One message read back from the spool."""

    seq: int
    kind: str
    payload: bytes


@dataclass
class SpoolCounters:
    """What the spool lost, over the life of the state directory."""

    dropped_telemetry: int = 0  # over the cap, or not writable
    dropped_events: int = 0
    corrupt: int = 0  # torn or damaged files skipped


@dataclass
class _Meta:
    epoch: str  # random per spool directory: a wiped state directory starts a new sequence
    seq_reserved: int  # every msg_seq below this may have been used
    counters: SpoolCounters
    registry_acks: bool = False  # the registry has acknowledged a message of this epoch


class Spool:
    """A bounded, crash-safe queue of messages on disk, oldest first. Thread-safe."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._records: dict[int, tuple[str, int]] = {}  # seq -> (kind, file size), oldest first
        self._bytes = 0
        self._queue: list[int] = []  # heap of the seqs to send; may hold forgotten ones
        self._queued: set[int] = set()  # what the heap really holds
        self._in_flight: set[int] = set()  # taken by the sender, no PUBACK yet
        self._sent: dict[int, float] = {}  # PUBACKed, not acknowledged: seq -> resend deadline
        self._sends: dict[int, int] = {}  # PUBACKs of each held message, since start
        directory.mkdir(parents=True, exist_ok=True)
        self._meta = self._load_meta()
        self._scan()
        for seq in self._records:
            self._enqueue(seq)
        newest = max(self._records, default=0)
        self._next_seq = max(self._meta.seq_reserved, newest + 1, 1)
        self._save_meta()

    # --- reading the state -----------------------------------------------------------------

    @property
    def epoch(self) -> str:
        """The random id of this spool's `msg_seq` sequence."""
        return self._meta.epoch

    # These two take no lock, so the event loop never waits behind another thread's fsync;
    # what they read may be a moment old.

    def pending(self) -> int:
        """Messages on disk queued to be sent (first sends and resends)."""
        return len(self._queued)

    def unacknowledged(self) -> int:
        """Messages the sender has out: in flight, or sent and not yet acknowledged."""
        return len(self._in_flight) + len(self._sent)

    @property
    def registry_acks(self) -> bool:
        """Whether the registry has ever acknowledged a message of this spool's epoch."""
        return self._meta.registry_acks

    def stats(self) -> dict[str, Any]:
        """Counts for telemetry and `/v1/status`."""
        return {
            "pending": len(self._records),
            "pending_bytes": self._bytes,
            "awaiting_ack": len(self._sent),
            "max_bytes": self.max_bytes,
            "next_msg_seq": self._next_seq,
            **asdict(self._meta.counters),
        }

    def sends(self, seq: int) -> int:
        """How often the broker has acknowledged message `seq` since start."""
        return self._sends.get(seq, 0)

    def holds(self, seq: int) -> bool:
        """Whether message `seq` is on disk, waiting for (or in) its send."""
        return seq in self._records

    # --- writing -----------------------------------------------------------------------------

    def append(self, kind: str, encode: Callable[[int], bytes]) -> int:
        """Store `encode(msg_seq)` under a new msg_seq and return it (even if it was dropped)."""
        if kind not in KINDS:
            raise ValueError(f"{kind!r} is not a spooled message kind")
        with self._lock:
            seq = self._allocate()
            payload = encode(seq)
            size = HEADER.size + len(payload)
            if not self._make_room(kind, size):
                self._count_drops([kind])
                log.warning("spool full: dropped %s message %d", kind, seq)
                return seq
            try:
                write_atomic(self._path(seq, kind), encode_record(payload))
            except OSError as e:
                log.error("cannot spool %s message %d: %s", kind, seq, e)
                self._count_drops([kind])
                return seq
            self._records[seq] = (kind, size)
            self._bytes += size
            self._enqueue(seq)
            return seq

    def take(self, limit: int) -> list[SpoolRecord]:
        """Read up to `limit` of the oldest queued messages, and mark them in flight."""
        taken: list[SpoolRecord] = []
        with self._lock:
            while self._queue and len(taken) < limit:
                seq = heapq.heappop(self._queue)
                if seq not in self._queued:
                    continue  # forgotten while queued
                self._queued.discard(seq)
                payload = self._read(seq, self._records[seq][0])
                if payload is not None:
                    self._in_flight.add(seq)
                    taken.append(SpoolRecord(seq, self._records[seq][0], payload))
        return taken

    def ack(self, seqs: Iterable[int]) -> None:
        """Delete these: acknowledged (or, where the registry does not acknowledge, PUBACKed)."""
        with self._lock:
            for seq in seqs:
                self._forget(seq)

    def sent(self, seqs: Iterable[int], resend_at: float) -> None:
        """The broker has these: keep them until acknowledged, queued again at `resend_at`."""
        with self._lock:
            for seq in seqs:
                if seq in self._in_flight:  # else acknowledged (or dropped) during the send
                    self._in_flight.discard(seq)
                    self._sent[seq] = resend_at
                    self._sends[seq] = self._sends.get(seq, 0) + 1

    def release(self, seqs: Iterable[int]) -> None:
        """These were not PUBACKed: queue them to be taken again."""
        with self._lock:
            for seq in seqs:
                if seq in self._in_flight:
                    self._in_flight.discard(seq)
                    self._enqueue(seq)

    def acknowledge(self, epoch: str, ranges: Iterable[tuple[int, int]]) -> int:
        """The registry stored the messages of `epoch` in `ranges`: delete them; return how many."""
        if epoch != self._meta.epoch:
            return 0  # another sequence: a wiped state directory's, never this one's numbers
        with self._lock:
            held = sorted(self._records)
            done = [
                seq
                for first, last in ranges
                for seq in held[bisect.bisect_left(held, first) : bisect.bisect_right(held, last)]
            ]
            for seq in done:
                self._forget(seq)
            if not self._meta.registry_acks:
                self._meta.registry_acks = True
                try:
                    self._save_meta()
                except OSError as e:  # remembered in memory; asked again after a restart
                    log.error("spool: cannot save that the registry acknowledges: %s", e)
        return len(done)

    def expire(self, now: float) -> int:
        """Queue again what was sent and not acknowledged by its deadline; return how many."""
        with self._lock:
            due = [seq for seq, deadline in self._sent.items() if deadline <= now]
            for seq in due:
                del self._sent[seq]
                self._enqueue(seq)
        return len(due)

    def postpone(self, resend_at: float) -> None:
        """Give every sent message until `resend_at` (a new connection: its acks may be queued)."""
        with self._lock:
            for seq in self._sent:
                self._sent[seq] = resend_at

    def next_deadline(self) -> float | None:
        """When the first sent message is due to be queued again, if any is waiting."""
        return min(self._sent.values(), default=None)

    # --- internals (called with the lock held) -----------------------------------------------

    def _allocate(self) -> int:
        if self._next_seq >= self._meta.seq_reserved:
            self._meta.seq_reserved = self._next_seq + SEQ_BLOCK
            self._save_meta()  # before the number is used: a crash never reuses it
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _make_room(self, kind: str, size: int) -> bool:
        """Drop the oldest telemetry, then the oldest events, until `size` fits."""
        excess = self._bytes + size - self.max_bytes
        if excess <= 0:
            return True
        victims: list[int] = []
        for victim_kind in (KIND_TELEMETRY, KIND_EVENTS):
            if victim_kind == KIND_EVENTS and kind == KIND_TELEMETRY:
                break  # new telemetry never pushes out an event: the new telemetry goes
            for seq, (record_kind, record_size) in self._records.items():
                if excess <= 0:
                    break
                if record_kind == victim_kind and seq not in self._in_flight:
                    victims.append(seq)
                    excess -= record_size
        if excess > 0:
            return False
        self._count_drops(self._records[seq][0] for seq in victims)
        for seq in victims:
            self._forget(seq)
        log.warning("spool full: dropped %d older messages", len(victims))
        return True

    def _count_drops(self, kinds: Iterable[str]) -> None:
        counters = self._meta.counters
        for kind in kinds:
            if kind == KIND_TELEMETRY:
                counters.dropped_telemetry += 1
            else:
                counters.dropped_events += 1
        # Counted before the files go: a crash in between over-reports a loss, never hides one.
        try:
            self._save_meta()
        except OSError as e:  # the count stays right in memory; the disk may be full
            log.error("spool: cannot save the drop counters: %s", e)

    def _enqueue(self, seq: int) -> None:
        if seq not in self._queued:
            self._queued.add(seq)
            heapq.heappush(self._queue, seq)

    def _forget(self, seq: int) -> None:
        entry = self._records.pop(seq, None)
        if entry is None:
            return
        self._bytes -= entry[1]
        self._queued.discard(seq)
        self._in_flight.discard(seq)
        self._sent.pop(seq, None)
        self._sends.pop(seq, None)
        path = self._path(seq, entry[0])
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            # Forgotten all the same: the next start finds the file and sends it once more,
            # a duplicate the registry drops. Raising here would stop the sender for good.
            log.error("spool: cannot delete %s: %s", path.name, e)

    def _read(self, seq: int, kind: str) -> bytes | None:
        path = self._path(seq, kind)
        try:
            payload = parse_record(path.read_bytes())
        except OSError as e:
            log.error("cannot read spooled message %s: %s", path.name, e)
            payload = None
        if payload is None:
            self._meta.counters.corrupt += 1
            self._save_meta()
            self._forget(seq)
        return payload

    def _path(self, seq: int, kind: str) -> Path:
        return self.directory / f"{seq:020d}.{kind}"

    def _scan(self) -> None:
        """Index the records on disk; delete temp files and records a crash left torn."""
        found: list[tuple[int, str, int]] = []
        torn = 0
        for path in self.directory.iterdir():
            if path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX):
                path.unlink(missing_ok=True)  # a write that never reached its rename
                continue
            match = _RECORD_NAME.match(path.name)
            if match is None:
                continue
            size = checked_size(path)
            if size is None:
                log.warning("spool: skipping the torn message file %s", path.name)
                path.unlink(missing_ok=True)
                torn += 1
                continue
            found.append((int(match[1]), match[2], size))
        for seq, kind, size in sorted(found):
            self._records[seq] = (kind, size)
            self._bytes += size
        self._meta.counters.corrupt += torn

    def _load_meta(self) -> _Meta:
        path = self.directory / META_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return _Meta(
                epoch=str(data["epoch"]),
                seq_reserved=int(data["seq_reserved"]),
                counters=SpoolCounters(**data["counters"]),
                registry_acks=data.get("registry_acks") is True,
            )
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("spool: %s is unreadable (%s); starting a new sequence", path, e)
        return _Meta(epoch=secrets.token_hex(8), seq_reserved=0, counters=SpoolCounters())

    def _save_meta(self) -> None:
        meta = self._meta
        data = {"epoch": meta.epoch, "seq_reserved": meta.seq_reserved,
                "counters": asdict(meta.counters), "registry_acks": meta.registry_acks}  # fmt: skip
        write_atomic(self.directory / META_FILE, json.dumps(data, sort_keys=True).encode())
