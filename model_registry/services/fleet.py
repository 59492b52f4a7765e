"""The fleet as an operator follows it: where each device of a deployment stands, device views.

A device's status in deployment D (model M, version V, created at C, deadline T) is derived,
never stored, from what the device reported (docs/registry.md, "Following a deployment"):

1. Its reported state decides first: when it runs V of M, the status is `activated`, unless its
   phase for M is neither idle nor failed while it is still assigned V: then the swap is done
   but probation is not, and the status is `probation`.
2. Otherwise its newest event about M version V received at or after C decides: received,
   verified, downloading -> `downloading`; activated -> `activated` (it ran V and has moved on
   since); rolled_back -> `rolled_back`; rejected, failed -> `failed`, with the event's reason.
   Events that name no model (an assignment refused before it could be read) do not count.
   C is stored on a whole second, so an event of that same second counts even if it came first.
3. Otherwise it is `pending`.
4. A status that is not final (pending, downloading, probation) becomes `superseded` when the
   registry has since assigned the device another version of M, else `silent` once T passed.

The final statuses are activated, rolled_back, failed, silent and superseded. A deployment is
done when every device's status is final, and succeeded when every device is activated.

A device's connection (docs/telemetry.md, "Liveness") is `offline` once the broker's will
arrived (or before it ever reported), `stale` while its state says online but nothing came
from it for STALE_AFTER_INTERVALS telemetry intervals plus STALE_GRACE_S, else `online`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from model_registry.services.context import RegistryContext
from model_registry.storage import DeploymentRecord, DeviceMessageRecord, DeviceRecord

PENDING = "pending"
DOWNLOADING = "downloading"
PROBATION = "probation"
ACTIVATED = "activated"
ROLLED_BACK = "rolled_back"
FAILED = "failed"
SILENT = "silent"
SUPERSEDED = "superseded"
STATUSES = (PENDING, DOWNLOADING, PROBATION, ACTIVATED, ROLLED_BACK, FAILED, SILENT, SUPERSEDED)
FINAL = frozenset({ACTIVATED, ROLLED_BACK, FAILED, SILENT, SUPERSEDED})

_EVENT_STATUS = {
    "received": DOWNLOADING,
    "verified": DOWNLOADING,
    "downloading": DOWNLOADING,
    "activated": ACTIVATED,
    "rolled_back": ROLLED_BACK,
    "rejected": FAILED,
    "failed": FAILED,
}
SETTLED_PHASES = frozenset({"idle", "failed"})  # no update of the model under way
ONLINE, STALE, OFFLINE = "online", "stale", "offline"
STALE_AFTER_INTERVALS = 3  # telemetry reports a device may miss before it is shown stale
STALE_GRACE_S = 10.0  # on top: the broker's and the ingest's own delays
DEFAULT_TELEMETRY_INTERVAL_S = 30.0  # the agent's default, for states that do not say
MAX_TELEMETRY_INTERVAL_S = 86_400.0  # the agent's own bound; beyond it, a state is not believed
MAX_SERIES = 1000  # events or telemetry reports in one device view


@dataclass(frozen=True)
class DeviceProgress:
    """Where one targeted device stands in a deployment, and why when it went wrong."""

    device: DeviceRecord
    status: str
    reason: str | None = None
    detail: str | None = None
    phase: str | None = None  # what the device's state says it is doing with the model
    since: datetime | None = None  # when the current step began: the registry received its event
    chunks: tuple[int, int] | None = None  # (done, total) of a download, from its last report

    @property
    def final(self) -> bool:
        """Whether the status can no longer change without a new report or deployment."""
        return self.status in FINAL


@dataclass(frozen=True)
class DeploymentProgress:
    """A deployment and the status of each of its devices, in the deployment's order."""

    deployment: DeploymentRecord
    devices: tuple[DeviceProgress, ...]

    @property
    def counts(self) -> dict[str, int]:
        """How many devices have each status (every status listed, zeros included)."""
        counts = dict.fromkeys(STATUSES, 0)
        for device in self.devices:
            counts[device.status] += 1
        return counts

    @property
    def done(self) -> bool:
        """Whether every device reached a final status."""
        return all(d.final for d in self.devices)

    @property
    def succeeded(self) -> bool:
        """Whether every device runs the deployed version."""
        return all(d.status == ACTIVATED for d in self.devices)


@dataclass(frozen=True)
class DeviceDetail:
    """One device with its recent events (newest first) and telemetry series (oldest first)."""

    device: DeviceRecord
    events: list[DeviceMessageRecord]
    telemetry: list[DeviceMessageRecord]


async def deployment_progress(ctx: RegistryContext, deployment_id: int) -> DeploymentProgress:
    """Derive the status of every device of a deployment from what the devices reported."""
    storage = ctx.storage
    deployment = await storage.get_deployment(deployment_id)
    targeted = set(deployment.device_ids)
    devices = {d.device_id: d for d in await storage.devices() if d.device_id in targeted}
    events: dict[str, list[DeviceMessageRecord]] = defaultdict(list)
    for event in await storage.deployment_events(deployment_id):
        events[event.device_id].append(event)
    now = ctx.clock()
    return DeploymentProgress(
        deployment,
        tuple(
            device_progress(deployment, devices[device_id], events[device_id], now)
            for device_id in deployment.device_ids
        ),
    )


def device_progress(
    deployment: DeploymentRecord,
    device: DeviceRecord,
    events: list[DeviceMessageRecord],
    now: datetime,
) -> DeviceProgress:
    """Apply the rules of this module to one device; `events` are oldest first."""
    progress = _with_activity(deployment, _reported(deployment, device, events), events)
    if progress.final:
        return progress
    assigned = _assigned(device, deployment.model)
    if assigned != deployment.version:
        return DeviceProgress(
            device, SUPERSEDED, "superseded", f"since assigned version {assigned}"
        )
    if now >= deployment.deadline:
        detail = f"still {progress.status} when the deadline passed"
        return DeviceProgress(device, SILENT, "deadline_passed", detail)
    return progress


def _reported(
    deployment: DeploymentRecord, device: DeviceRecord, events: list[DeviceMessageRecord]
) -> DeviceProgress:
    model, version = deployment.model, deployment.version
    reported = as_dict(model_reports(device).get(model))
    if as_dict(reported.get("active")).get("version") == version:
        still_assigned = _assigned(device, model) == version
        settling = still_assigned and reported.get("phase") not in SETTLED_PHASES
        return DeviceProgress(device, PROBATION if settling else ACTIVATED)
    for event in reversed(events):
        body = event.body
        if body.get("model") == model and body.get("version") == version:
            status = _EVENT_STATUS.get(body.get("event", ""))
            if status is not None:
                return DeviceProgress(device, status, body.get("reason"), body.get("detail"))
    return DeviceProgress(device, PENDING)


# The event that starts each moving status: probation begins with the swap (`activated`).
_STEP_STARTS = {PROBATION: ("activated",), DOWNLOADING: ("received", "verified", "downloading")}


def _with_activity(
    deployment: DeploymentRecord, progress: DeviceProgress, events: list[DeviceMessageRecord]
) -> DeviceProgress:
    """Add the reported phase, when the current step began, and a download's chunk counts."""
    model, version = deployment.model, deployment.version
    phase = as_dict(model_reports(progress.device).get(model)).get("phase")
    mine = [e for e in events if e.body.get("model") == model and e.body.get("version") == version]
    starts = _STEP_STARTS.get(progress.status, ())
    since = next((e.received for e in mine if e.body.get("event") in starts), None)
    chunks = None
    if progress.status == DOWNLOADING:
        chunks = next((c for e in reversed(mine) if (c := _chunks(e.body)) is not None), None)
    return replace(
        progress, phase=phase if isinstance(phase, str) else None, since=since, chunks=chunks
    )


def _chunks(body: dict[str, Any]) -> tuple[int, int] | None:
    """A `downloading` event's `progress` as (done, total), if it is two sane whole numbers."""
    progress = as_dict(body.get("progress")) if body.get("event") == "downloading" else {}
    done, total = progress.get("chunks_done"), progress.get("chunks_total")
    numbers = [n for n in (done, total) if isinstance(n, int) and not isinstance(n, bool)]
    if len(numbers) == 2 and 0 <= numbers[0] <= numbers[1]:
        return numbers[0], numbers[1]
    return None


def _assigned(device: DeviceRecord, model: str) -> Any:
    return (device.assigned.get(model) or {}).get("version")


def as_dict(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: device reports are not trusted."""
    return value if isinstance(value, dict) else {}


def connection(device: DeviceRecord, now: datetime) -> str:
    """`online`, `stale` or `offline`: whether the registry still hears from the device."""
    return connection_of(device.online, device.last_seen, telemetry_interval_s(device), now)


def connection_of(
    online: bool, last_seen: datetime | None, interval_s: float, now: datetime
) -> str:
    """The rule of `connection`, from the device's online flag, last sighting and interval."""
    if not online:
        return OFFLINE
    if last_seen is None:
        return STALE
    silent_s = (now - last_seen).total_seconds()
    allowed_s = STALE_AFTER_INTERVALS * interval_s + STALE_GRACE_S
    return ONLINE if silent_s <= allowed_s else STALE


def telemetry_interval_s(device: DeviceRecord) -> float:
    """How often the device says it reports (its state's `telemetry_interval_s`), or the default."""
    return believable_interval(as_dict(device.state).get("telemetry_interval_s"))


def believable_interval(value: Any) -> float:
    """`value` as a reporting interval when it is a number from 1 to 86400 s, else the default."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return DEFAULT_TELEMETRY_INTERVAL_S
    return float(value) if 1 <= value <= MAX_TELEMETRY_INTERVAL_S else DEFAULT_TELEMETRY_INTERVAL_S


def model_reports(device: DeviceRecord) -> dict[str, Any]:
    """What the device's last online state says per model (empty before any state)."""
    return as_dict(as_dict(device.state).get("models"))


def update_phase(device: DeviceRecord) -> str | None:
    """The device's update phase: the first model's that is not idle, else idle; None if unknown."""
    if device.state is None:
        return None
    phases = [as_dict(status).get("phase") for status in model_reports(device).values()]
    return next((p for p in phases if isinstance(p, str) and p != "idle"), "idle")


async def device_detail(
    ctx: RegistryContext, device_id: str, *, events: int = 50, telemetry: int = 100
) -> DeviceDetail:
    """A device, its newest `events` and last `telemetry` reports (each at most MAX_SERIES)."""
    storage = ctx.storage
    device = await storage.get_device(device_id)
    recent = await storage.events(device_id, limit=min(events, MAX_SERIES))
    series = await storage.telemetry(device_id, limit=min(telemetry, MAX_SERIES))
    return DeviceDetail(device, recent, series[::-1])
