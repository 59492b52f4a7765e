"""What drift needs from a device: its inputs counted in the release's bins, and its predictions.

Per model version and telemetry interval (docs/telemetry.md, "Drift counts"):

* `bins`, only when the release carries a profile: for each profiled input, the count of each
  summarized column's finite values in each of the profile's bins. Requests are kept (their
  profiled columns, as float64) until `MERGE_ROWS` rows have come and then binned in one
  vectorised pass, as the feature summaries are merged.
* `predictions`: a classifier's predicted classes (the label output that probation's collapse
  check reads, `update.observations.predicted_labels`), with or without a profile, because the
  rollout gates compare the predicted classes of two versions; a regressor's first value per
  row in the profile's output bins, only with a profile.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from edge_agent.runtime.model import Array
from edge_agent.update.observations import label_output, predicted_labels
from edge_protocol import ModelIO, Profile
from edge_protocol.profile import MAX_BINS, MAX_CLASS_LABEL, MAX_CLASSES, Bins

log = logging.getLogger(__name__)

MERGE_ROWS = 64  # rows kept before one binning pass
BINS_BUDGET_BYTES = 24 * 1024  # of bins per report: 10 bins x 64 columns x 5 inputs fit
OTHER_CLASS = "_other"  # labels beyond MAX_CLASSES distinct ones in an interval
PROFILES_KEPT = 64  # (model, version) profiles remembered between intervals


class ColumnBins:
    """The bins of the profiled columns of one input, counted in one pass per block of rows."""

    def __init__(self, columns: tuple[Bins, ...]) -> None:
        self.width = len(columns)
        self.sizes = [len(c.counts) for c in columns]
        # Edges padded with +inf to one matrix: a finite value is never >= +inf, so the padding
        # adds nothing to the bin index, and every column is binned in the same numpy passes.
        widest = max((len(c.edges) for c in columns), default=0)
        self._edges = np.full((widest, self.width), np.inf)  # row k: every column's k-th edge
        for i, column in enumerate(columns):
            self._edges[: len(column.edges), i] = column.edges
        self._offsets = np.arange(self.width) * MAX_BINS
        self.counts = np.zeros(self.width * MAX_BINS, dtype=np.int64)
        self._pending: list[Array] = []
        self._pending_rows = 0

    def add(self, value: Array) -> None:
        """Keep one request's rows; bin them with others once MERGE_ROWS have come."""
        rows = value.shape[0] if value.ndim else 1
        matrix = value.reshape(rows, -1)
        if rows == 0 or matrix.shape[1] < self.width:
            return  # a narrower request than the release's input: not comparable, not counted
        self._pending.append(matrix[:, : self.width].astype(np.float64))
        self._pending_rows += rows
        if self._pending_rows >= MERGE_ROWS:
            self.flush()

    def flush(self) -> None:
        """Bin the kept rows: bin index = how many of the column's edges are <= the value."""
        if not self._pending:
            return
        block = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending, self._pending_rows = [], 0
        # One comparison of the whole block per edge rank (at most 15), not per value: about
        # twice as fast as one three-dimensional comparison and its sum.
        index = np.broadcast_to(self._offsets, block.shape).copy()
        for edges in self._edges:
            index += block >= edges
        self.counts += np.bincount(index[np.isfinite(block)], minlength=self.counts.size)

    def to_list(self) -> list[list[int]]:
        """One list of counts per column, as long as the column's bins."""
        self.flush()
        table = self.counts.reshape(self.width, MAX_BINS)
        return [table[i, :size].tolist() for i, size in enumerate(self.sizes)]


class VersionDrift:
    """The drift counts of one model version over one interval."""

    def __init__(self, profile: Profile | None) -> None:
        self.profile = profile
        self.inputs: dict[str, ColumnBins] = {}
        if profile is not None:
            self.inputs = {name: ColumnBins(p.columns) for name, p in profile.inputs.items()}
        self.output: str | None = None
        self.classes: dict[str, int] = {}
        self.output_bins: Array | None = None

    def add_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Count one request's inputs in the profile's bins."""
        for name, bins in self.inputs.items():
            value = inputs.get(name)
            if isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
                bins.add(value)

    def add_outputs(self, outputs: Mapping[str, Any], io: ModelIO) -> None:
        """Count one answer's predictions: classes of the label output, or binned values."""
        expected = self.profile.output if self.profile is not None else None
        if expected is not None and expected.bins is not None:
            self._add_values(outputs.get(expected.name), expected.name, expected.bins)
            return
        labels = predicted_labels(outputs, io)
        if labels is None:
            return
        self.output = label_output(outputs, io)
        for label in labels:
            key = str(label)[:MAX_CLASS_LABEL]
            if key not in self.classes and len(self.classes) >= MAX_CLASSES:
                key = OTHER_CLASS
            self.classes[key] = self.classes.get(key, 0) + 1

    def _add_values(self, value: Any, name: str, bins: Bins) -> None:
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf" or not value.size:
            return
        first = value.reshape(value.shape[0], -1)[:, 0] if value.ndim else value.reshape(1)
        first = first[np.isfinite(first)]
        index = np.searchsorted(np.asarray(bins.edges), first, side="right")
        counts = np.bincount(index, minlength=len(bins.counts))
        self.output = name
        self.output_bins = counts if self.output_bins is None else self.output_bins + counts

    def to_dict(self) -> dict[str, Any]:
        """The `predictions` and `bins` fields of the version's telemetry entry."""
        body: dict[str, Any] = {}
        if self.output is not None and self.output_bins is not None:
            body["predictions"] = {"output": self.output, "bins": self.output_bins.tolist()}
        elif self.output is not None and self.classes:
            body["predictions"] = {"output": self.output, "classes": dict(self.classes)}
        if self.inputs:
            body["bins"] = {name: bins.to_list() for name, bins in sorted(self.inputs.items())}
        return body


class DriftCounts:
    """The interval's `VersionDrift` per (model, version), with the profiles seen lately.

    Inputs are observed before the request runs and outputs after, possibly in the next
    interval: the profile of each version is remembered across intervals (bounded) so that the
    outputs find it.
    """

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], VersionDrift] = {}
        self._profiles: OrderedDict[tuple[str, int], Profile | None] = OrderedDict()

    def add_inputs(
        self, model: str, version: int, profile: Profile | None, inputs: Mapping[str, Any]
    ) -> None:
        """One request's validated inputs for `version` of `model`, whose release has `profile`."""
        key = (model, version)
        if key not in self._profiles:
            self._profiles[key] = profile
            while len(self._profiles) > PROFILES_KEPT:
                self._profiles.popitem(last=False)
        if profile is not None:
            self._entry(key).add_inputs(inputs)

    def add_outputs(
        self, model: str, version: int, outputs: Mapping[str, Any], io: ModelIO
    ) -> None:
        """One answer of `version` of `model`."""
        self._entry((model, version)).add_outputs(outputs, io)

    def _entry(self, key: tuple[str, int]) -> VersionDrift:
        entry = self.versions.get(key)
        if entry is None:
            entry = self.versions[key] = VersionDrift(self._profiles.get(key))
        return entry

    def take(self) -> dict[tuple[str, int], dict[str, Any]]:
        """The fields of each version with something to say; the next interval starts empty."""
        versions, self.versions = self.versions, {}
        out = {key: entry.to_dict() for key, entry in versions.items()}
        return {key: fields for key, fields in out.items() if fields}


def fit_bins(body: dict[str, Any]) -> dict[str, Any]:
    """Leave out every `bins` field of a report whose bins exceed BINS_BUDGET_BYTES.

    The registry stores reports of at most 64 KiB by default ([ingest] max_telemetry_bytes)
    and leaves out feature summaries, not bins, above it: the bins stay well below that.
    """
    versions = [
        entry
        for model in body.get("models", {}).values()
        for entry in model.get("versions", {}).values()
        if "bins" in entry
    ]
    size = sum(len(json.dumps(entry["bins"], separators=(",", ":"))) for entry in versions)
    if size <= BINS_BUDGET_BYTES:
        return body
    for entry in versions:
        del entry["bins"]
    body["bins_dropped"] = True
    log.warning("drift bins of %d bytes left out of a telemetry report", size)
    return body
