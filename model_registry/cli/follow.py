"""Following a deployment (`--wait`): what each device is doing, until done, out of time or Ctrl-C.

On a terminal the block of device lines is redrawn in place every poll, so the time a device has
spent in probation or a download's chunk count moves; into a file or a pipe, a line is printed
only when something changed (a device's status, phase, chunk count or connection). Ctrl-C stops
the following, not the deployment: the registry carries on, and the message says how to follow
it again.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from edge_protocol import parse_time, utc_now
from model_registry.cli.client import ApiClient
from model_registry.cli.display import printable
from model_registry.errors import RegistryError

POLL_INTERVAL_S = 1.0
# Shown in this order when following a deployment; see model_registry/services/fleet.py.
STATUS_ORDER = (
    "activated", "probation", "downloading", "pending",
    "failed", "rolled_back", "silent", "superseded",
)  # fmt: skip
MOVING = frozenset({"pending", "downloading", "probation"})
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command Ctrl-C stopped
UP_AND_CLEAR = "\x1b[{lines}F\x1b[J"  # cursor up to the block's first line, erase to the end


class FollowInterruptedError(RegistryError):
    """Ctrl-C while following a deployment, which goes on without us."""


def follow(
    client: ApiClient, deployment_id: int, timeout_s: float, *, show: bool
) -> dict[str, Any]:
    """Poll the deployment, showing its devices, until it is done or `timeout_s` passed."""
    give_up = time.monotonic() + timeout_s
    view = ProgressView(sys.stdout) if show else None
    current: dict[str, Any] | None = None
    try:
        while True:
            current = client.get(f"/v1/deployments/{deployment_id}")
            if view is not None:
                view.update(current)
            left = give_up - time.monotonic()
            if current["progress"]["done"] or left <= 0:
                return current
            time.sleep(min(POLL_INTERVAL_S, left))
    except KeyboardInterrupt:
        raise FollowInterruptedError(interrupted(deployment_id, current)) from None


def interrupted(deployment_id: int, current: dict[str, Any] | None) -> str:
    """`interrupted; deployment 7 is still under way: 2 probation. Follow it again with: ...`."""
    again = f"Follow it again with: model-registry deployments show {deployment_id} --wait"
    if current is None:
        return f"interrupted; deployment {deployment_id} was made. {again}"
    counts = current["progress"]["counts"]
    moving = [f"{counts[s]} {s}" for s in STATUS_ORDER if s in MOVING and counts.get(s)]
    if not moving:
        return f"interrupted; deployment {deployment_id} has no device under way. {again}"
    under_way = ", ".join(moving)
    return f"interrupted; deployment {deployment_id} is still under way: {under_way}. {again}"


def summary_line(deployment: dict[str, Any]) -> str:
    """`  1/2 activated: 1 activated, 1 probation`."""
    counts = deployment["progress"]["counts"]
    parts = [f"{counts[s]} {s.replace('_', ' ')}" for s in STATUS_ORDER if counts.get(s)]
    total = len(deployment["devices"])
    return f"  {counts.get('activated', 0)}/{total} activated: {', '.join(parts)}"


def device_line(device: dict[str, Any], now: datetime, *, elapsed: bool = True) -> str:
    """`dev-1  probation, 12 s in`: what one device is doing; without `elapsed`, no times."""
    status = device["status"]
    text = status.replace("_", " ")
    phase = device.get("phase")
    if status == "downloading":
        chunks = device.get("chunks")
        if chunks:
            percent = 100 * chunks["done"] // chunks["total"] if chunks["total"] else 100
            text += f" {chunks['done']}/{chunks['total']} chunks ({percent}%)"
        elif phase in ("verifying", "loading", "selftest"):
            text += f", {phase}"
    if status in MOVING and elapsed and device.get("since"):
        text += f", {_duration(now - parse_time(device['since']))} in"
    if status in ("failed", "rolled_back", "silent", "superseded"):
        why = device.get("reason") or device.get("detail")
        text += f" ({why})" if why else ""
    if device.get("connection", "online") != "online":
        seen = device.get("last_seen")
        text += f"; {device['connection']}, last seen {seen or 'never'}"
    return f"    {device['device_id']}  {text}"


def _duration(delta: Any) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class ProgressView:
    """Shows a followed deployment: redrawn in place on a terminal, changes only elsewhere."""

    def __init__(self, out: TextIO, clock: Callable[[], datetime] = utc_now) -> None:
        self._out = out
        self._clock = clock
        self._terminal = out.isatty()
        self._drawn = 0  # lines of the block on the terminal now
        self._shown: dict[str, str] = {}  # per device (and "" for the summary): what was printed

    def update(self, deployment: dict[str, Any]) -> None:
        """Show the deployment as it is now."""
        if self._terminal:
            self._redraw(deployment)
        else:
            self._print_changes(deployment)
        self._out.flush()

    def _redraw(self, deployment: dict[str, Any]) -> None:
        now = self._clock()
        devices = deployment["progress"]["devices"]
        room = max(3, shutil.get_terminal_size().lines - 3)
        lines = [summary_line(deployment), *(device_line(d, now) for d in devices[:room])]
        if len(devices) > room:
            lines.append(f"    ... and {len(devices) - room} more")
        if self._drawn:
            self._out.write(UP_AND_CLEAR.format(lines=self._drawn))
        for line in lines:
            self._out.write(printable(line) + "\n")
        self._drawn = len(lines)

    def _print_changes(self, deployment: dict[str, Any]) -> None:
        now = self._clock()
        summary = summary_line(deployment)
        if self._shown.get("") != summary:
            self._out.write(printable(summary) + "\n")
            self._shown[""] = summary
        for device in deployment["progress"]["devices"]:
            key = device_line(device, now, elapsed=False)
            if self._shown.get(device["device_id"]) != key:
                self._out.write(printable(device_line(device, now)) + "\n")
                self._shown[device["device_id"]] = key
