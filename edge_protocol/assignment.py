"""The assignment document: which release of each model one device runs (docs/protocol.md 4.3),
and the experiment an assignment may attach to a model (4.4).

An assignment that carries an experiment is spec_version 2.0; one without is 1.0. Version 1
receivers accept and ignore fields they do not know, so an experiment inside a 1.x document
would be silently dropped by an agent that predates experiments: it would serve the control
alone while the registry counted it in the experiment. The major version makes such an agent
refuse the document instead (`malformed`, naming spec_version), and the registry sees why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Self

from edge_protocol.errors import MetadataFormatError
from edge_protocol.fields import FieldReader, check_spec_version, format_time

SPEC_VERSION = "1.0"  # an assignment without experiments
EXPERIMENT_SPEC_VERSION = "2.0"  # an assignment with at least one experiment
SPEC_MAJORS = (1, 2)
SPLIT_RANGE = (1, 99)  # percent of the requests the treatment answers
MODES = ("split", "shadow")


@dataclass(frozen=True)
class Pin:
    """One release, pinned by version, hash and size."""

    version: int
    sha256: str
    size: int
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> Self:
        """Parse and validate a pin."""
        r = FieldReader(obj, path)
        return cls(
            version=r.integer("version", minimum=1),
            sha256=r.sha256("sha256"),
            size=r.integer("size", minimum=1),
            unrecognized_fields=r.unrecognized(),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the wire object."""
        return {
            **self.unrecognized_fields,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
        }


@dataclass(frozen=True)
class ExperimentSpec:
    """An experiment on one model: the control is the model's pinned release, the candidate
    a second release that answers `split_percent` of the requests ("split") or sees every
    input without ever answering ("shadow")."""

    experiment_id: int
    name: str
    mode: str
    candidate: Pin
    split_percent: int = 0  # 0 for a shadow
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise MetadataFormatError(f"experiment mode {self.mode!r} is not one of {MODES}")

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> Self:
        """Parse and validate an experiment: exactly one of `treatment` and `shadow`."""
        r = FieldReader(obj, path)
        experiment_id = r.integer("id", minimum=1)
        name = r.string("name", name=True)
        treatment, shadow = r.optional("treatment"), r.optional("shadow")
        if (treatment is None) == (shadow is None):
            raise MetadataFormatError(f"{path}: needs exactly one of 'treatment' and 'shadow'")
        if treatment is not None:
            candidate = Pin.from_dict(treatment, r.path("treatment"))
            split = r.integer("split_percent", minimum=SPLIT_RANGE[0])
            if split > SPLIT_RANGE[1]:
                raise MetadataFormatError(
                    f"{r.path('split_percent')}: expected {SPLIT_RANGE[0]} to {SPLIT_RANGE[1]}"
                )
            mode = "split"
        else:
            candidate, split, mode = Pin.from_dict(shadow, r.path("shadow")), 0, "shadow"
            if r.optional("split_percent") is not None:
                raise MetadataFormatError(f"{r.path('split_percent')}: a shadow answers nothing")
        return cls(experiment_id, name, mode, candidate, split, r.unrecognized())

    def to_dict(self) -> dict[str, Any]:
        """Return the wire object."""
        body: dict[str, Any] = {**self.unrecognized_fields, "id": self.experiment_id}
        body["name"] = self.name
        if self.mode == "split":
            body["treatment"] = self.candidate.to_dict()
            body["split_percent"] = self.split_percent
        else:
            body["shadow"] = self.candidate.to_dict()
        return body


@dataclass(frozen=True)
class AssignedModel:
    """What an assignment pins for one model: the release version, its hash and size, and
    the experiment running on it, if any."""

    version: int
    sha256: str
    size: int
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)
    experiment: ExperimentSpec | None = None

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> Self:
        """Parse and validate one assigned model."""
        pin = Pin.from_dict(obj, path)
        extra = dict(pin.unrecognized_fields)
        raw = extra.pop("experiment", None)
        experiment = None if raw is None else ExperimentSpec.from_dict(raw, f"{path}.experiment")
        if experiment is not None and experiment.candidate.version == pin.version:
            raise MetadataFormatError(
                f"{path}.experiment: the candidate is the control (version {pin.version})"
            )
        return cls(pin.version, pin.sha256, pin.size, extra, experiment)

    @property
    def pin(self) -> Pin:
        """The control's pin, without the experiment."""
        return Pin(self.version, self.sha256, self.size)

    def to_dict(self) -> dict[str, Any]:
        """Return the wire object."""
        body = {
            **self.unrecognized_fields,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
        }
        if self.experiment is not None:
            body["experiment"] = self.experiment.to_dict()
        return body


@dataclass(frozen=True)
class Assignment:
    """The registry's word for one device: which release of each model it must run."""

    TYPE: ClassVar[str] = "assignment"
    device_id: str
    seq: int
    created: datetime
    expires: datetime
    models: dict[str, AssignedModel]
    spec_version: str = ""  # "": chosen by what `models` holds (spec_version_for)
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.spec_version:
            object.__setattr__(self, "spec_version", spec_version_for(self.models))

    @classmethod
    def from_dict(cls, obj: Any) -> Self:
        """Parse and validate an assignment `signed` object."""
        r = FieldReader(obj, "assignment")
        r.constant("_type", cls.TYPE)
        spec_version = check_spec_version(r, SPEC_MAJORS)
        raw_models = r.obj("models")
        models: dict[str, AssignedModel] = {}
        for name, entry in raw_models.items():
            FieldReader({"model": name}, r.path("models")).string("model", name=True)
            models[name] = AssignedModel.from_dict(entry, f"{r.path('models')}.{name}")
            if models[name].experiment is not None and spec_version.startswith("1."):
                raise MetadataFormatError(
                    f"{r.path('models')}.{name}.experiment: an experiment needs spec_version "
                    f"{EXPERIMENT_SPEC_VERSION} (a 1.x agent would ignore it)"
                )
        return cls(
            spec_version=spec_version,
            device_id=r.string("device_id", name=True),
            seq=r.integer("seq", minimum=1),
            created=r.time("created"),
            expires=r.time("expires"),
            models=models,
            unrecognized_fields=r.unrecognized(),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the `signed` object."""
        return {
            **self.unrecognized_fields,
            "_type": self.TYPE,
            "spec_version": self.spec_version,
            "device_id": self.device_id,
            "seq": self.seq,
            "created": format_time(self.created),
            "expires": format_time(self.expires),
            "models": {name: m.to_dict() for name, m in self.models.items()},
        }


def spec_version_for(models: dict[str, AssignedModel]) -> str:
    """2.0 when any model runs an experiment (older agents must refuse it), else 1.0."""
    if any(m.experiment is not None for m in models.values()):
        return EXPERIMENT_SPEC_VERSION
    return SPEC_VERSION
