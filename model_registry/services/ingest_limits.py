"""What keeps one device from flooding the registry: per-device token buckets, bounded logs.

A device has two buckets, one of messages and one of payload bytes, refilled at the rates of
`[ingest]` in registry.toml. A message passes only when both hold enough; otherwise it is
dropped before it is even parsed. Every drop a device can be blamed for is noted in `DropLog`,
which names the devices in at most one log line per interval, so a flood cannot flood the log
either, and keeps the per-device totals /metrics shows for the worst offenders.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from model_registry.config import IngestConfig
from model_registry.mqtt.client import MqttMessage

log = logging.getLogger("model_registry.services.ingest")

Clock = Callable[[], float]
MAX_TRACKED_DEVICES = 100_000  # buckets and totals kept at once; far above a fleet's size
LOGGED_DEVICES = 5  # devices named in one log line
TOP_DEVICES = 10  # devices shown in model_registry_ingest_dropped_top_devices
WILL_INTERVAL_S = 10.0  # an offline will past empty buckets: at most one per device this often


@dataclass
class _Bucket:
    messages: float
    payload: float
    updated: float


class DeviceRateLimiter:
    """Token buckets per device: `allow` says whether one more message of a size fits."""

    def __init__(self, config: IngestConfig, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._burst = (float(config.burst_messages), float(config.burst_kib * 1024))
        self._rates = (config.messages_per_minute / 60, config.kib_per_minute * 1024 / 60)
        self._buckets: dict[str, _Bucket] = {}
        self._wills: dict[str, float] = {}  # when each device's last will passed empty buckets

    def allow(self, device_id: str, size: int) -> bool:
        """Take one message of `size` bytes from the device's buckets, if they hold enough."""
        now = self._clock()
        bucket = self._buckets.get(device_id)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_DEVICES:
                self._forget_full(now)
            bucket = self._buckets[device_id] = _Bucket(*self._burst, now)
        else:
            self._refill(bucket, now)
        if bucket.messages < 1 or bucket.payload < size:
            return False
        bucket.messages -= 1
        bucket.payload -= size
        return True

    def allow_will(self, device_id: str) -> bool:
        """Whether an offline will may pass empty buckets: once per WILL_INTERVAL_S a device."""
        now = self._clock()
        last = self._wills.get(device_id)
        if last is not None and now - last < WILL_INTERVAL_S:
            return False
        if len(self._wills) >= MAX_TRACKED_DEVICES:
            self._wills.clear()
        self._wills[device_id] = now
        return True

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.updated)
        bucket.messages = min(self._burst[0], bucket.messages + elapsed * self._rates[0])
        bucket.payload = min(self._burst[1], bucket.payload + elapsed * self._rates[1])
        bucket.updated = now

    def _forget_full(self, now: float) -> None:
        # A full bucket is the same as none; if every one is in use, start over rather than grow.
        for device_id, bucket in list(self._buckets.items()):
            self._refill(bucket, now)
            if (bucket.messages, bucket.payload) == self._burst:
                del self._buckets[device_id]
        if len(self._buckets) >= MAX_TRACKED_DEVICES:
            self._buckets.clear()


class DropLog:
    """Counts dropped messages per device; logs them at most once per interval."""

    def __init__(self, interval_s: float, clock: Clock = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last_line: float | None = None
        self._pending: Counter[tuple[str, str]] = Counter()  # (device, reason) since last line
        self.by_device: Counter[str] = Counter()  # every drop since start, for /metrics

    def note(self, device_id: str, reason: str) -> None:
        """Record one dropped message of `device_id`; log if the last line is old enough."""
        self._pending[(device_id, reason)] += 1
        self.by_device[device_id] += 1
        if len(self.by_device) > MAX_TRACKED_DEVICES:
            self._trim()
        if len(self._pending) >= MAX_TRACKED_DEVICES:
            self._write(self._clock())
        else:
            self.flush()

    def flush(self) -> None:
        """Log what was dropped since the last line, if there is any and the interval is up."""
        now = self._clock()
        due = self._last_line is None or now - self._last_line >= self.interval_s
        if self._pending and due:
            self._write(now)

    def top(self, count: int = TOP_DEVICES) -> dict[str, int]:
        """The devices with the most dropped messages since start."""
        return dict(self.by_device.most_common(count))

    def _write(self, now: float) -> None:
        since = "" if self._last_line is None else f" in the last {now - self._last_line:.0f} s"
        total = sum(self._pending.values())
        devices = {device for device, _reason in self._pending}
        worst = ", ".join(
            f"{device} ({count} {reason})"
            for (device, reason), count in self._pending.most_common(LOGGED_DEVICES)
        )
        more = len(self._pending) - LOGGED_DEVICES
        tail = f" and {more} more device/reason pairs" if more > 0 else ""
        log.warning(
            "dropped %d device message(s) from %d device(s)%s: %s%s",
            *(total, len(devices), since, worst, tail),
        )
        self._pending.clear()
        self._last_line = now

    def _trim(self) -> None:
        # Keep the worst half: the top-N view stays right and memory stays bounded.
        keep = self.by_device.most_common(MAX_TRACKED_DEVICES // 2)
        self.by_device = Counter(dict(keep))


class IngestQueue(asyncio.Queue[MqttMessage]):
    """The queue from the MQTT connection to the ingest: gated per message, bounded in bytes."""

    def __init__(
        self,
        admit: Callable[[MqttMessage], bool],
        max_bytes: int,
        overloaded: Callable[[MqttMessage], None],
    ) -> None:
        super().__init__()
        self._admit = admit
        self._max_bytes = max_bytes
        self._overloaded = overloaded
        self.bytes = 0  # payload bytes queued

    def put_nowait(self, item: MqttMessage) -> None:
        """Queue a message that passes the gate and fits the byte bound; drop it otherwise."""
        if not self._admit(item):
            return
        if self.bytes + len(item.payload) > self._max_bytes:
            self._overloaded(item)
            return
        super().put_nowait(item)

    def _put(self, item: MqttMessage) -> None:
        self.bytes += len(item.payload)
        super()._put(item)

    def _get(self) -> MqttMessage:
        item = super()._get()
        self.bytes -= len(item.payload)
        return item
