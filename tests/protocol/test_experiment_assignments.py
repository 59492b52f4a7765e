"""Experiments in signed assignments (docs/protocol.md 4.4): schema, version, tampering."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import pytest

from edge_protocol import AssignedModel, Assignment, ExperimentSpec, Pin, TrustedState
from edge_protocol.errors import (
    MalformedDocumentError,
    MetadataFormatError,
    SignatureThresholdError,
)
from edge_protocol.fields import FieldReader, check_spec_version
from tests.protocol.factory import DEVICE, MODEL, FrozenClock, Registry, sign

CANDIDATE = Pin(2, "b" * 64, 900)


def _experiment(mode: str = "split", split: int = 10) -> ExperimentSpec:
    return ExperimentSpec(7, "checkout", mode, CANDIDATE, split if mode == "split" else 0)


def _assignment(registry: Registry, experiment: ExperimentSpec | None, seq: int = 1) -> Assignment:
    plain = registry.assignment(seq=seq)
    control = plain.models[MODEL]
    models = {MODEL: replace(control, experiment=experiment)}
    return Assignment(plain.device_id, seq, plain.created, plain.expires, models)


@pytest.mark.parametrize("mode", ["split", "shadow"])
def test_an_experiment_round_trips_and_makes_the_document_version_2(mode: str) -> None:
    registry = Registry()
    assignment = _assignment(registry, _experiment(mode))
    assert assignment.spec_version == "2.0"
    assert Assignment.from_dict(json.loads(json.dumps(assignment.to_dict()))) == assignment
    state = TrustedState(registry.root_bytes(), device_id=DEVICE, clock=FrozenClock())
    verified = state.verify_assignment(registry.assignment_bytes(assignment))
    assert verified.models[MODEL].experiment == _experiment(mode)
    assert registry.assignment().spec_version == "1.0", "no experiment: still a 1.0 document"


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_assignment(Registry(), _experiment()).to_dict())
    target = doc["models"][MODEL]["experiment"]
    if value is None:
        del target[path]
    else:
        target[path] = value
    return doc


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("split zero", _with("split_percent", 0), "split_percent"),
    ("split 100", _with("split_percent", 100), "split_percent"),
    ("split missing", _with("split_percent", None), "split_percent"),
    ("split string", _with("split_percent", "10"), "split_percent"),
    ("both variants", _with("shadow", CANDIDATE.to_dict()), "exactly one"),
    ("no variant", _with("treatment", None), "exactly one"),
    ("bad candidate hash", _with("treatment", {**CANDIDATE.to_dict(), "sha256": "x"}), "sha256"),
    ("candidate is control", _with("treatment", {"version": 1, "sha256": "c" * 64, "size": 5}),
     "is the control"),
    ("bad name", _with("name", "a/b"), "experiment.name"),
    ("id zero", _with("id", 0), "experiment.id"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "where"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_malformed_experiment_is_refused_naming_the_field(
    doc: dict[str, Any], where: str
) -> None:
    with pytest.raises(MetadataFormatError, match=where):
        Assignment.from_dict(doc)


def test_a_shadow_takes_no_split() -> None:
    doc = _assignment(Registry(), _experiment("shadow")).to_dict()
    doc["models"][MODEL]["experiment"]["split_percent"] = 10
    with pytest.raises(MetadataFormatError, match="a shadow answers nothing"):
        Assignment.from_dict(doc)


def test_an_experiment_inside_a_1x_document_is_refused() -> None:
    # A 1.x receiver would ignore the field and serve the control alone: never valid.
    doc = _assignment(Registry(), _experiment()).to_dict()
    doc["spec_version"] = "1.0"
    with pytest.raises(MetadataFormatError, match=r"needs spec_version 2\.0"):
        Assignment.from_dict(doc)


def test_an_agent_that_speaks_only_1x_refuses_an_experiment_with_the_reason() -> None:
    """What agents before experiments run on every assignment: the 1.x version check."""
    doc = _assignment(Registry(), _experiment()).to_dict()
    with pytest.raises(MetadataFormatError) as refused:
        check_spec_version(FieldReader(doc, "assignment"), (1,))
    assert str(refused.value) == (
        "assignment.spec_version: '2.0' is not a 1.x document; "
        "this implementation speaks spec_version 1"
    )


def test_a_document_of_a_later_major_version_is_refused_as_malformed() -> None:
    registry = Registry()
    doc = _assignment(registry, _experiment()).to_dict()
    doc["spec_version"] = "3.0"
    state = TrustedState(registry.root_bytes(), device_id=DEVICE, clock=FrozenClock())
    with pytest.raises(MalformedDocumentError, match=r"not a 1\.x or 2\.x document"):
        state.verify_assignment(sign(doc, *registry.release_keys))


@pytest.mark.parametrize(
    ("field", "value"),
    [("split_percent", 90), ("treatment", {**CANDIDATE.to_dict(), "version": 3})],
)
def test_a_tampered_experiment_is_refused_like_any_other_assignment(field: str, value: Any) -> None:
    registry = Registry()
    genuine = json.loads(registry.assignment_bytes(_assignment(registry, _experiment())))
    genuine["signed"]["models"][MODEL]["experiment"][field] = value
    state = TrustedState(registry.root_bytes(), device_id=DEVICE, clock=FrozenClock())
    with pytest.raises(SignatureThresholdError):
        state.verify_assignment(json.dumps(genuine).encode())
    assert state.assignment_seq == 0


def test_assigned_model_keeps_the_control_pin() -> None:
    entry = AssignedModel(1, "a" * 64, 10, experiment=_experiment())
    assert entry.pin == Pin(1, "a" * 64, 10)
    assert AssignedModel.from_dict(entry.to_dict(), "m") == entry
