"""Drift: how far what devices see has moved from the release's reference profile.

A release's profile (edge_protocol.profile) holds the bins of each input column and of the
predictions, with the reference count per bin; devices count what they serve in the same bins
(`bins` and `predictions` of telemetry's `models.{m}.versions.{v}`). Over a window of version
points (model_registry.statistics) this compares the two per feature, per device and
fleet-wide: the population stability index and the largest CDF gap, judged ok, warn or alert
at the `[drift]` limits once a window holds `min_samples` values (docs/registry.md, "Drift").

Counts that do not fit the release's profile (another number of columns or bins, bins for an
input the profile lacks, bins of a release without one) are left out and counted by reason.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from edge_protocol import Envelope, Profile, Release
from edge_protocol.errors import ProtocolError
from model_registry.config import DriftConfig
from model_registry.errors import InvalidInputError, NotFoundError
from model_registry.statistics.distributions import max_cdf_gap, psi
from model_registry.statistics.window import VersionWindow, aggregate
from model_registry.storage import Storage, VersionPoint

PREDICTIONS = "predictions"  # the feature name of the predictions
OK, WARN, ALERT = "ok", "warn", "alert"
INSUFFICIENT = "insufficient"  # fewer than min_samples values in the window: not judged
SEVERITY = {INSUFFICIENT: 0, OK: 0, WARN: 1, ALERT: 2}
# Why counts were left out: the label of model_registry_drift_ignored_total.
BIN_COUNTS = "bin_counts"  # another number of columns or bins than the profile's
NOT_COUNTS = "not_counts"  # not lists of non-negative integers
NO_PROFILE = "no_profile"  # bins the release's profile does not have (or no profile at all)
WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
MIN_WINDOW = timedelta(minutes=1)
MAX_WINDOW = timedelta(days=30)
_WINDOW = re.compile(r"([0-9]{1,7})([smhd]?)")


def parse_window(text: str) -> timedelta:
    """`90s`, `30m`, `1h`, `2d` or a number of seconds: a window from 1 minute to 30 days."""
    match = _WINDOW.fullmatch(text.strip())
    if match is None:
        raise InvalidInputError(f"window {ascii(text)[:40]} is not a duration like 30m, 1h or 2d")
    window = timedelta(seconds=int(match[1]) * WINDOW_UNITS[match[2] or "s"])
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise InvalidInputError(f"window {text.strip()} is not from 1 minute to 30 days")
    return window


@dataclass(frozen=True)
class DriftLimits:
    """The `[drift]` limits a window is judged by."""

    warn_psi: float = 0.1
    alert_psi: float = 0.25
    min_samples: int = 200

    @classmethod
    def from_config(cls, config: DriftConfig) -> DriftLimits:
        """The limits of registry.toml's `[drift]`."""
        return cls(config.warn_psi, config.alert_psi, config.min_samples)

    def status(self, value: float | None, samples: int) -> str:
        """ok, warn or alert for a PSI over `samples` values; insufficient below min_samples."""
        if value is None or samples < self.min_samples:
            return INSUFFICIENT
        return ALERT if value >= self.alert_psi else WARN if value >= self.warn_psi else OK


@dataclass(frozen=True)
class FeatureDrift:
    """The drift of one feature (an input column, or the predictions) of a model version."""

    model: str
    version: int
    device_id: str | None  # None: fleet-wide
    feature: str  # "X[3]": input X, column 3; or "predictions"
    psi: float | None  # None without any value in the window
    max_cdf_gap: float | None
    samples: int
    status: str
    devices: int = 1  # devices whose reports are in the window

    @property
    def key(self) -> tuple[int, str, str]:
        """(version, device_id or '', feature): what a status belongs to."""
        return self.version, self.device_id or "", self.feature

    def to_dict(self) -> dict[str, Any]:
        """The row of `GET /v1/models/{m}/drift`."""
        return {
            "version": self.version, "device_id": self.device_id, "feature": self.feature,
            "psi": _rounded(self.psi), "max_cdf_gap": _rounded(self.max_cdf_gap),
            "samples": self.samples, "status": self.status, "devices": self.devices,
        }  # fmt: skip


def worst_first(rows: Sequence[FeatureDrift]) -> list[FeatureDrift]:
    """Rows by status (alert first), then PSI, largest first; unjudged rows last."""
    return sorted(
        rows,
        key=lambda r: (-SEVERITY[r.status], r.status == INSUFFICIENT, -(r.psi or 0.0), r.key),
    )


class ProfileBook:
    """The profiles of a model's releases, read from their signed envelopes once."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._profiles: dict[tuple[str, int], Profile | None] = {}

    async def get(self, model: str, version: int) -> Profile | None:
        """The profile of release `version` of `model`; None without one (or release)."""
        key = (model, version)
        if key not in self._profiles:
            try:
                record = await self._storage.get_release(model, version)
                signed = Envelope.from_bytes(record.envelope).signed
                self._profiles[key] = Release.from_dict(signed).profile
            except (NotFoundError, ProtocolError):
                self._profiles[key] = None  # a version the registry never signed: no profile
        return self._profiles[key]


async def drift_rows(
    storage: Storage,
    model: str,
    since: datetime,
    limits: DriftLimits,
    *,
    until: datetime | None = None,
    device_id: str | None = None,
    version: int | None = None,
    profiles: ProfileBook | None = None,
    ignored: Counter[str] | None = None,
    count_after: datetime | None = None,
) -> list[FeatureDrift]:
    """The drift of every feature of every version of `model` in [since, until), worst first.

    Per device, and fleet-wide unless `device_id` narrows it to one device. `ignored` counts
    the points left out, by reason, of those received after `count_after`.
    """
    profiles = profiles or ProfileBook(storage)
    devices = None if device_id is None else [device_id]
    points = await storage.version_points(model, since, until, version, devices)
    by_version: dict[int, list[VersionPoint]] = defaultdict(list)
    for point in points:
        by_version[point.version].append(point)
    rows: list[FeatureDrift] = []
    for number, found in sorted(by_version.items()):
        profile = await profiles.get(model, number)
        kept = _checked(found, profile, ignored, count_after)
        by_device: dict[str, list[VersionPoint]] = defaultdict(list)
        for point in kept:
            by_device[point.device_id].append(point)
        for device, own in sorted(by_device.items()):
            rows += window_drift(aggregate(own), profile, limits, device)
        if device_id is None:
            rows += window_drift(aggregate(kept), profile, limits, None)
    return worst_first(rows)


async def prediction_drift(
    storage: Storage,
    model: str,
    version: int,
    since: datetime,
    *,
    device_ids: Sequence[str] | None = None,
    until: datetime | None = None,
    limits: DriftLimits | None = None,
) -> FeatureDrift | None:
    """The prediction drift of `version` on `device_ids` (all when None) since `since`.

    For rollout gates: the predictions of those devices together against the release's
    profile; None when the release has no output profile or nothing was predicted.
    """
    profile = await ProfileBook(storage).get(model, version)
    if profile is None or profile.output is None:
        return None
    points = await storage.version_points(model, since, until, version, device_ids)
    merged = aggregate(_checked(points, profile, None, None))
    rows = window_drift(merged, profile, limits or DriftLimits(), None)
    found = [row for row in rows if row.feature == PREDICTIONS]
    return found[0] if found else None


def window_drift(
    window: VersionWindow | None, profile: Profile | None, limits: DriftLimits, device: str | None
) -> list[FeatureDrift]:
    """The drift of each profiled feature in one window (nothing without a profile)."""
    if window is None or profile is None:
        return []
    pairs: list[tuple[str, list[int], list[int]]] = []
    bins = window.detail.get("bins", {})
    for name, entry in sorted(profile.inputs.items()):
        observed = bins.get(name) if isinstance(bins, dict) else None
        for i, column in enumerate(entry.columns):
            counts = observed[i] if observed is not None else [0] * len(column.counts)
            pairs.append((f"{name}[{i}]", list(column.counts), counts))
    predicted = _prediction_pair(profile, window.detail.get(PREDICTIONS))
    if predicted is not None:
        pairs.append((PREDICTIONS, *predicted))
    return [
        _feature(window, device, feature, expected, observed, limits=limits)
        for feature, expected, observed in pairs
    ]


def _feature(
    window: VersionWindow,
    device: str | None,
    feature: str,
    expected: list[int],
    observed: list[int],
    *,
    limits: DriftLimits,
) -> FeatureDrift:
    samples = int(sum(observed))
    value = gap = None
    if samples > 0 and sum(expected) > 0:
        value, gap = psi(expected, observed), max_cdf_gap(expected, observed)
    return FeatureDrift(
        window.model, window.version, device, feature, value, gap, samples,
        limits.status(value, samples), len(window.devices),
    )  # fmt: skip


def _prediction_pair(profile: Profile, sent: Any) -> tuple[list[int], list[int]] | None:
    """(expected, observed) counts of the predictions over the profile's classes or bins."""
    output = profile.output
    if output is None:
        return None
    if output.bins is not None:
        if isinstance(sent, dict) and isinstance(sent.get("bins"), list):
            return list(output.bins.counts), sent["bins"]
        return list(output.bins.counts), [0] * len(output.bins.counts)
    expected = dict(output.classes or {})
    observed = sent.get("classes", {}) if isinstance(sent, dict) else {}
    # Classes the reference never predicted count as bins of their own with nothing expected
    # (PSI floors the empty share), so a new class shows as drift.
    labels = sorted(set(expected) | set(observed))
    return [expected.get(k, 0) for k in labels], [int(observed.get(k, 0)) for k in labels]


def _checked(
    points: Sequence[VersionPoint],
    profile: Profile | None,
    ignored: Counter[str] | None,
    count_after: datetime | None,
) -> list[VersionPoint]:
    """The points with their drift fields checked against `profile`: a point whose fields do
    not fit loses them (the rest of it stays), counted by reason in `ignored`."""
    kept = []
    for point in points:
        reason = fit_problem(point.detail, profile)
        if reason is None:
            kept.append(point)
            continue
        if ignored is not None and (count_after is None or point.at > count_after):
            ignored[reason] += 1
        detail = {k: v for k, v in point.detail.items() if k not in ("bins", PREDICTIONS)}
        kept.append(replace(point, detail=detail))
    return kept


def fit_problem(detail: dict[str, Any], profile: Profile | None) -> str | None:
    """Why a point's `bins` or `predictions` do not fit the release's profile; None if they do."""
    return _bins_problem(detail.get("bins"), profile) or _predictions_problem(
        detail.get(PREDICTIONS), profile
    )


def _bins_problem(bins: Any, profile: Profile | None) -> str | None:
    if bins is None:
        return None
    if profile is None or not isinstance(bins, dict) or set(bins) - set(profile.inputs):
        return NO_PROFILE
    for name, columns in bins.items():
        problem = _table_problem(columns, [len(c.counts) for c in profile.inputs[name].columns])
        if problem is not None:
            return problem
    return None


def _predictions_problem(predicted: Any, profile: Profile | None) -> str | None:
    if predicted is None or not isinstance(predicted, dict):
        return None if predicted is None else NOT_COUNTS
    output = profile.output if profile is not None else None
    if "bins" in predicted:
        if output is None or output.bins is None or predicted.get("output") != output.name:
            return NO_PROFILE
        return _table_problem([predicted["bins"]], [len(output.bins.counts)])
    classes = predicted.get("classes")
    if not isinstance(classes, dict) or not all(_is_count(v) for v in classes.values()):
        return NOT_COUNTS
    if output is not None and output.classes is not None and predicted.get("output") != output.name:
        return NO_PROFILE
    return None


def _table_problem(columns: Any, sizes: list[int]) -> str | None:
    if not isinstance(columns, list) or len(columns) != len(sizes):
        return BIN_COUNTS
    for column, size in zip(columns, sizes, strict=True):
        if not isinstance(column, list) or len(column) != size:
            return BIN_COUNTS
        if not all(_is_count(v) for v in column):
            return NOT_COUNTS
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rounded(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")
