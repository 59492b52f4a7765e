"""The reference profile a release carries: what the model's inputs and outputs looked like.

The registry computes it at push from the evaluation set (or a reference set): per input
column, quantile bin edges and how many reference values fell in each bin; for the output,
the count of each predicted class (classifiers) or binned predictions (regressors). Devices
count what they serve in the same bins, and the registry compares the two (population
stability index). docs/protocol.md, section 4.2, is the normative description.

Signed content carries no floats, so edges are decimal strings (Python's shortest round-trip
spelling of the float64 value); the counts are integers, the expected share of a bin being
its count over the column's total. A bin `i` holds the values `x` with exactly `i` edges
`<= x` (numpy's `searchsorted(edges, x, side="right")`), so bin 0 is below the first edge and
the last bin is at or above the last one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from edge_protocol.errors import MetadataFormatError
from edge_protocol.fields import FieldReader

MAX_PROFILE_INPUTS = 16  # as many inputs as telemetry summarizes per model
MAX_PROFILE_COLUMNS = 64  # the first columns of each flattened row, as telemetry summarizes
MAX_BINS = 16  # per column; the registry makes about 10
MAX_CLASSES = 256  # classes of a classifier's output profile
MAX_CLASS_LABEL = 64  # characters of one class label
MAX_COUNT = 2**53  # counts stay exact in a float64, which is how receivers often add them
_EDGE = re.compile(r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$")


@dataclass(frozen=True)
class Bins:
    """Inner bin edges (strictly increasing) and the reference count of each of their bins."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> Self:
        """Parse `{"edges": [decimal strings], "counts": [integers]}`, one count more."""
        r = FieldReader(obj, path)
        edges = _edges(r.array("edges", max_items=MAX_BINS - 1), r.path("edges"))
        counts = _counts(r.array("counts", max_items=MAX_BINS), r.path("counts"))
        if len(counts) != len(edges) + 1:
            raise MetadataFormatError(
                f"{r.path('counts')}: {len(counts)} counts for {len(edges)} edges; "
                f"{len(edges)} edges make {len(edges) + 1} bins"
            )
        return cls(edges, counts)

    def to_dict(self) -> dict[str, Any]:
        """Return the wire object."""
        return {"edges": [repr(e) for e in self.edges], "counts": list(self.counts)}


@dataclass(frozen=True)
class InputProfile:
    """The bins of each summarized column of one input (the first MAX_PROFILE_COLUMNS)."""

    columns: tuple[Bins, ...]

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> Self:
        """Parse `{"columns": [bins, ...]}`."""
        r = FieldReader(obj, path)
        raw = r.array("columns", max_items=MAX_PROFILE_COLUMNS)
        if not raw:
            raise MetadataFormatError(f"{r.path('columns')}: needs at least one column")
        return cls(tuple(Bins.from_dict(c, f"{r.path('columns')}[{i}]") for i, c in enumerate(raw)))

    def to_dict(self) -> dict[str, Any]:
        """Return the wire object."""
        return {"columns": [c.to_dict() for c in self.columns]}


@dataclass(frozen=True)
class OutputProfile:
    """The reference predictions of one output: class counts, or bins of a regressor's value."""

    name: str
    classes: dict[str, int] | None = None
    bins: Bins | None = None

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> Self:
        """Parse `{"name": ..., "classes": {label: count}}` or `{"name": ..., "bins": bins}`."""
        r = FieldReader(obj, path)
        name = r.string("name", max_length=256)
        raw_classes, raw_bins = r.optional("classes"), r.optional("bins")
        if (raw_classes is None) == (raw_bins is None):
            raise MetadataFormatError(f"{path}: needs exactly one of classes and bins")
        if raw_bins is not None:
            return cls(name, bins=Bins.from_dict(raw_bins, r.path("bins")))
        return cls(name, classes=_classes(raw_classes, r.path("classes")))

    def to_dict(self) -> dict[str, Any]:
        """Return the wire object."""
        if self.bins is not None:
            return {"name": self.name, "bins": self.bins.to_dict()}
        return {"name": self.name, "classes": dict(self.classes or {})}


@dataclass(frozen=True)
class Profile:
    """The release's reference profile: its inputs' columns and (optionally) its output."""

    rows: int  # reference rows it was computed from
    inputs: dict[str, InputProfile]
    output: OutputProfile | None = None
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: Any, path: str, io_inputs: Sequence[Any] = ()) -> Self:
        """Parse and validate a profile; with `io_inputs` (the release's tensor specs), also
        check that each profiled input exists and has the columns its shape implies."""
        r = FieldReader(obj, path)
        rows = r.integer("rows", minimum=1)
        raw_inputs = r.obj("inputs")
        if len(raw_inputs) > MAX_PROFILE_INPUTS:
            raise MetadataFormatError(f"{r.path('inputs')}: at most {MAX_PROFILE_INPUTS} inputs")
        inputs = {
            name: InputProfile.from_dict(raw, f"{r.path('inputs')}.{name}")
            for name, raw in raw_inputs.items()
        }
        raw_output = r.optional("output")
        output = (
            None if raw_output is None else OutputProfile.from_dict(raw_output, r.path("output"))
        )
        profile = cls(rows, inputs, output, r.unrecognized())
        if io_inputs:
            profile.check_shapes(io_inputs, r.path("inputs"))
        return profile

    def check_shapes(self, io_inputs: Sequence[Any], path: str) -> None:
        """Each profiled input is one of `io_inputs`, with min(64, its columns) columns."""
        specs = {spec.name: spec for spec in io_inputs}
        for name, entry in self.inputs.items():
            spec = specs.get(name)
            if spec is None:
                raise MetadataFormatError(f"{path}.{name}: the release has no input of that name")
            inner = spec.shape[1:] if len(spec.shape) > 1 else (1,)
            if all(d > 0 for d in inner):
                expected = min(math.prod(inner), MAX_PROFILE_COLUMNS)
                if len(entry.columns) != expected:
                    raise MetadataFormatError(
                        f"{path}.{name}.columns: {len(entry.columns)} columns, but input "
                        f"{name!r} of shape {list(spec.shape)} has {expected} to profile"
                    )

    def to_dict(self) -> dict[str, Any]:
        """Return the wire object."""
        body: dict[str, Any] = {
            **self.unrecognized_fields,
            "rows": self.rows,
            "inputs": {name: entry.to_dict() for name, entry in self.inputs.items()},
        }
        if self.output is not None:
            body["output"] = self.output.to_dict()
        return body


def _edges(raw: list[Any], path: str) -> tuple[float, ...]:
    edges: list[float] = []
    for i, text in enumerate(raw):
        if not isinstance(text, str) or len(text) > 32 or not _EDGE.fullmatch(text):
            raise MetadataFormatError(f'{path}[{i}]: expected a decimal string like "-0.25"')
        value = float(text)
        if not math.isfinite(value):
            raise MetadataFormatError(f"{path}[{i}]: {text!r} is not a finite number")
        if edges and value <= edges[-1]:
            raise MetadataFormatError(f"{path}[{i}]: edges must be strictly increasing")
        edges.append(value)
    return tuple(edges)


def _counts(raw: list[Any], path: str) -> tuple[int, ...]:
    for i, count in enumerate(raw):
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT:
            raise MetadataFormatError(f"{path}[{i}]: expected an integer from 0 to 2^53")
    return tuple(raw)


def _classes(raw: Any, path: str) -> dict[str, int]:
    if not isinstance(raw, dict) or not 1 <= len(raw) <= MAX_CLASSES:
        raise MetadataFormatError(f"{path}: expected an object of 1 to {MAX_CLASSES} classes")
    for label, count in raw.items():
        if len(label) > MAX_CLASS_LABEL:
            raise MetadataFormatError(
                f"{path}: class labels are at most {MAX_CLASS_LABEL} characters"
            )
        _counts([count], f"{path}.{label}")
    return dict(raw)
