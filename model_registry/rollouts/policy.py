"""A rollout's policy: its waves, soak, and the limits of its halt gates.

The same keys in a `--policy FILE.toml`, in the REST body's `policy` object and in the stored
rollout (docs/registry.md, "Rollouts"). Durations are seconds, or text with a unit: `90`,
`"90s"`, `"10m"`, `"2h"`, `"1d"`. Every value is checked and bounded; a mistake names the key.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from model_registry.errors import InvalidInputError

MAX_WAVES = 20
MAX_CANARIES = 1000
MAX_DURATION_S = 30 * 86_400.0
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d)?\s*")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, None: 1.0}
_DURATIONS = ("soak", "deadline", "baseline")


@dataclass(frozen=True)
class RolloutPolicy:
    """How a rollout moves and when it halts; every limit is documented in docs/registry.md."""

    steps: tuple[float, ...] = (5.0, 25.0, 100.0)  # cumulative percent of the group per wave
    soak: float = 600.0  # seconds every gate must hold once a wave's devices activated
    canary: tuple[str, ...] = ()  # the first wave, named; the hash picks the others
    manual: bool = False  # wait for `rollout resume` before each next wave
    rollback: bool = True  # on a halt or abort, give moved devices their previous version
    deadline: float = 600.0  # a wave's device silent this long after its move counts as failed
    # install outcomes (the devices moved so far)
    success_percent: float = 90.0  # of a wave's devices activated for its soak to begin
    max_failure_percent: float = 10.0  # rejected, failed, rolled back or silent: halt above
    min_reported: int = 1  # devices with an outcome before that percentage is judged
    # model health (telemetry of the new version against the one it replaced, same devices)
    max_error_rate: float = 0.05  # share of 5xx answers
    max_latency_ratio: float = 2.0  # p99 of the new version over the old one's
    latency_floor_ms: float = 5.0  # an old p99 below this counts as this
    max_psi: float = 0.25  # PSI of the predicted classes
    min_requests: int = 100  # per version, before a health gate is judged (a p99 needs them)
    require_traffic: bool = True  # a soak lasts until the health gates had min_requests
    baseline: float = 3600.0  # how far back before a wave the old version's telemetry counts

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        for name in _DURATIONS:
            value = getattr(self, name)
            low = 1.0 if name == "deadline" else 0.0
            if not low <= value <= MAX_DURATION_S:
                raise InvalidInputError(
                    f"policy {name!r} must be between {low:g} s and {MAX_DURATION_S:g} s, "
                    f"not {value:g}"
                )
        if len(self.canary) > MAX_CANARIES or len(set(self.canary)) != len(self.canary):
            raise InvalidInputError(
                f"policy 'canary' must name at most {MAX_CANARIES} distinct devices"
            )
        for name in ("success_percent", "max_failure_percent"):
            _bounded(name, getattr(self, name), 0.0, 100.0)
        _bounded("max_error_rate", self.max_error_rate, 0.0, 1.0)
        _bounded("max_latency_ratio", self.max_latency_ratio, 1.0, 1000.0)
        _bounded("latency_floor_ms", self.latency_floor_ms, 0.0, 60_000.0)
        _bounded("max_psi", self.max_psi, 0.0, 100.0)
        _bounded("min_reported", self.min_reported, 1, 1_000_000)
        _bounded("min_requests", self.min_requests, 1, 10**9)

    def to_dict(self) -> dict[str, Any]:
        """The policy as JSON (durations in seconds), as stored and shown."""
        data = asdict(self)
        data["steps"], data["canary"] = list(self.steps), list(self.canary)
        return data

    def describe(self) -> str:
        """`waves 5%, 25%, 100%; soak 10 s`: one line for the CLI."""
        waves = ", ".join(f"{s:g}%" for s in self.steps)
        manual = "; manual" if self.manual else ""
        return f"waves {waves}; soak {self.soak:g} s{manual}"


def parse_policy(data: Any, *, where: str = "policy") -> RolloutPolicy:
    """Build a policy from a JSON or TOML object; InvalidInputError naming a bad key.

    `where` (a file, a request field) prefixes the message when it is not the bare policy.
    """
    try:
        return _build(data)
    except InvalidInputError as e:
        if where == "policy":
            raise
        raise InvalidInputError(f"{where}: {e}") from e


def _build(data: Any) -> RolloutPolicy:
    if not isinstance(data, dict):
        raise InvalidInputError("the policy must be an object of rollout settings")
    known = {f.name for f in fields(RolloutPolicy)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidInputError(f"unknown setting {str(key)[:60]!r}{hint}")
        values[key] = _value(key, value)
    return RolloutPolicy(**values)


def merged(base: RolloutPolicy, **overrides: Any) -> RolloutPolicy:
    """`base` with the given settings replaced (the CLI's flags over a policy file)."""
    return parse_policy({**base.to_dict(), **overrides})


def parse_duration(value: Any, name: str) -> float:
    """Seconds from a number or a text such as `10m`; InvalidInputError naming `name`."""
    if isinstance(value, bool):
        raise InvalidInputError(f"{name} must be a duration such as 30, '90s' or '10m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)) is not None:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        shown = str(value)[:40]
        raise InvalidInputError(
            f"{name} must be a duration such as 30, '90s', '10m' or '2h', not {shown!r}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidInputError(f"{name} must be a duration of zero seconds or more")
    return seconds


def _value(key: str, value: Any) -> Any:
    if key in _DURATIONS:
        return parse_duration(value, f"policy {key!r}")
    if key == "steps":
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        if not isinstance(value, list | tuple) or len(value) > MAX_WAVES:
            raise InvalidInputError(
                f"policy 'steps' must be a list of at most {MAX_WAVES} percents"
            )
        return tuple(_number(key, _float_text(v)) for v in value)
    if key == "canary":
        if not isinstance(value, list | tuple) or not all(
            isinstance(d, str) and 0 < len(d) <= 200 for d in value
        ):
            raise InvalidInputError("policy 'canary' must be a list of device ids")
        return tuple(value)
    if key in ("manual", "rollback", "require_traffic"):
        if not isinstance(value, bool):
            raise InvalidInputError(f"policy {key!r} must be true or false")
        return value
    if key in ("min_reported", "min_requests"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputError(f"policy {key!r} must be a whole number")
        return value
    return _number(key, value)


def _float_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value.rstrip("%"))
        except ValueError:
            raise InvalidInputError(
                f"policy 'steps' must be percents such as 5,25,100, not {value[:20]!r}"
            ) from None
    return value


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError(f"policy {key!r} must be a number")
    return float(value)


def _bounded(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidInputError(f"policy {name!r} must be between {low:g} and {high:g}")


def _check_steps(steps: tuple[float, ...]) -> None:
    if not steps:
        raise InvalidInputError("policy 'steps' must name at least one wave")
    if any(not 0 < s <= 100 for s in steps):
        raise InvalidInputError("policy 'steps' must be percents above 0 and at most 100")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise InvalidInputError("policy 'steps' must grow: each wave reaches more of the group")
    if steps[-1] != 100:
        raise InvalidInputError(
            "policy 'steps' must end at 100: the last wave reaches every device"
        )
