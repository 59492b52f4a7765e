"""The install-outcome gate and what every gate answers: a verdict with its numbers.

Install outcomes are those of the rollout's deployments (model_registry/services/fleet.py): a
device moved by a wave counts once it reported an outcome. `activated` (past probation) is a
success; `failed` (rejected or failed), `rolled_back` and `silent` (nothing past the deadline)
are failures; `superseded` (someone assigned it another version since) counts as neither. Like
AWS IoT Jobs' abort criteria, the failure percentage is judged only once `min_reported`
devices have an outcome, and the rollout halts when it is above `max_failure_percent`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from model_registry.rollouts.policy import RolloutPolicy
from model_registry.services.fleet import ACTIVATED, FAILED, ROLLED_BACK, SILENT, DeviceProgress

INSTALL = "install"
FAILURES = (FAILED, ROLLED_BACK, SILENT)
MAX_NAMED_DEVICES = 50  # devices a verdict names; the count says how many there were


@dataclass(frozen=True)
class Verdict:
    """What one gate found: held, broken, or not judged (too little to judge on)."""

    gate: str
    held: bool | None  # None: not judged yet
    measured: float | None
    limit: float
    devices: tuple[str, ...] = ()  # the devices the measurement is about
    detail: str = ""
    waits: bool = False  # not judged for want of answers yet (not because it cannot apply)

    @property
    def broken(self) -> bool:
        """Whether the gate halts the rollout."""
        return self.held is False

    def numbers(self) -> dict[str, Any]:
        """The verdict as an audit record's numbers."""
        return {
            "gate": self.gate,
            "held": self.held,
            "measured": None if self.measured is None else round(self.measured, 6),
            "limit": self.limit,
            "devices": list(self.devices[:MAX_NAMED_DEVICES]),
            "device_count": len(self.devices),
            "detail": self.detail,
            "waits": self.waits,
        }

    def sentence(self) -> str:
        """`gate install: 100% > 10% (...) on pi-3`: the reason a halt gives."""
        named = ", ".join(self.devices[:MAX_NAMED_DEVICES])
        more = len(self.devices) - MAX_NAMED_DEVICES
        if more > 0:
            named += f" and {more} more"
        measured = "-" if self.measured is None else f"{self.measured:.4g}"
        on = f" on {named}" if named else ""
        return f"gate {self.gate}: {measured} above the limit {self.limit:g} ({self.detail}){on}"


def install_gate(progress: Iterable[DeviceProgress], policy: RolloutPolicy) -> Verdict:
    """Judge the install outcomes of the devices the rollout moved so far."""
    reported = [p for p in progress if p.status == ACTIVATED or p.status in FAILURES]
    failed = [p for p in reported if p.status in FAILURES]
    limit = policy.max_failure_percent
    if len(reported) < policy.min_reported:
        detail = f"{len(reported)} of at least {policy.min_reported} device(s) reported"
        return Verdict(INSTALL, None, None, limit, detail=detail)
    percent = 100.0 * len(failed) / len(reported)
    why = ", ".join(
        f"{p.device.device_id} {p.status}: {p.reason or p.detail or '-'}" for p in failed
    )
    detail = f"{len(failed)} of {len(reported)} reported device(s) failed" + (
        f": {why[:500]}" if why else ""
    )
    return Verdict(
        INSTALL,
        percent <= limit,
        percent,
        limit,
        tuple(p.device.device_id for p in failed),
        detail,
    )


def settled(progress: Iterable[DeviceProgress], wave_size: int, policy: RolloutPolicy) -> Verdict:
    """Whether enough of a wave's devices activated (passed probation) for its soak to begin."""
    activated = [p.device.device_id for p in progress if p.status == ACTIVATED]
    percent = 100.0 * len(activated) / wave_size if wave_size else 100.0
    detail = f"{len(activated)} of {wave_size} device(s) activated"
    return Verdict(
        "success", percent >= policy.success_percent, percent, policy.success_percent,
        tuple(activated), detail,
    )  # fmt: skip
