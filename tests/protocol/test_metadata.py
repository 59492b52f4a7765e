"""Metadata types: round trips and strict validation of every field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from edge_protocol import Artifact, Assignment, Release, Root
from edge_protocol.errors import MetadataFormatError
from tests.protocol.factory import Registry

REGISTRY = Registry()


def test_documents_round_trip_through_dicts() -> None:
    for doc in (REGISTRY.root(), REGISTRY.release(), REGISTRY.assignment()):
        assert type(doc).from_dict(doc.to_dict()) == doc


def test_unknown_fields_at_every_level_survive_a_round_trip() -> None:
    data = REGISTRY.release().to_dict()
    data["future"] = {"x": 1}
    data["artifact"]["compression"] = "zstd"
    data["selftest"]["inputs"][0]["layout"] = "nchw"
    assert Release.from_dict(data).to_dict() == data


def test_artifact_chunks_and_lengths() -> None:
    data, artifact = REGISTRY.artifact(size=1000, chunk_size=256)
    assert len(artifact.chunks) == 4
    assert [artifact.chunk_length(i) for i in range(4)] == [256, 256, 256, 232]
    exact = Artifact.describe(data[:512], 256)
    assert [exact.chunk_length(i) for i in range(2)] == [256, 256]


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for part in parents:
            doc = doc[int(part)] if part.isdigit() else doc[part]  # type: ignore[index]
        doc[last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for part in parents:
            doc = doc[part]
        del doc[last]

    return mutate


RELEASE_CASES: list[tuple[str, Mutation, str]] = [
    ("wrong _type", _set("_type", "root"), r"release\._type"),
    ("spec 2", _set("spec_version", "2.0"), "spec_version"),
    ("model with slash", _set("model", "a/b"), r"release\.model"),
    ("model wildcard", _set("model", "m+"), r"release\.model"),
    ("version zero", _set("version", 0), r"release\.version"),
    ("version bool", _set("version", True), r"release\.version"),
    ("version string", _set("version", "3"), r"release\.version"),
    ("missing label", _delete("label"), r"release\.label"),
    ("local time", _set("created", "2026-06-01T12:00:00+02:00"), r"release\.created"),
    ("not a date", _set("expires", "2026-02-30T00:00:00Z"), r"release\.expires"),
    ("bad sha", _set("artifact.sha256", "ABC"), r"release\.artifact\.sha256"),
    ("size zero", _set("artifact.size", 0), r"release\.artifact\.size"),
    ("size negative", _set("artifact.size", -5), r"release\.artifact\.size"),
    ("chunk size zero", _set("artifact.chunk_size", 0), r"release\.artifact\.chunk_size"),
    ("chunk size huge", _set("artifact.chunk_size", 2**30), r"release\.artifact\.chunk_size"),
    ("too few chunks", _set("artifact.chunks", ["0" * 64]), r"release\.artifact\.chunks"),
    ("bad chunk hash", _set("artifact.chunks", ["x"] * 4), r"release\.artifact\.chunks"),
    ("size vs chunks", _set("artifact.size", 2000), r"release\.artifact\.chunks"),
    ("bad datatype", _set("io.inputs.0.datatype", "FLOAT"), r"release\.io\.inputs\[0\]"),
    ("zero dim", _set("io.inputs.0.shape", [0, 2]), r"release\.io\.inputs\[0\]\.shape"),
    ("float dim", _set("io.inputs.0.shape", [-1, "2"]), r"release\.io\.inputs\[0\]\.shape"),
    ("no selftest", _delete("selftest"), r"release\.selftest"),
    ("variable selftest", _set("selftest.inputs.0.shape", [-1, 2]), r"selftest\.inputs\[0\]"),
    ("short selftest", _set("selftest.inputs.0.shape", [2, 2]), r"needs 16"),
    ("bad base64", _set("selftest.outputs.0.data", "***"), r"selftest\.outputs\[0\]\.data"),
    ("bytes selftest", _set("selftest.outputs.0.datatype", "BYTES"), "BYTES"),
    ("empty outputs", _set("selftest.outputs", []), "at least one"),
    ("negative atol", _set("selftest.atol", "-1"), r"selftest\.atol"),
    ("nan rtol", _set("selftest.rtol", "nan"), r"selftest\.rtol"),
    ("build list", _set("build", []), r"release\.build"),
]


@pytest.mark.parametrize(
    ("mutate", "where"), [c[1:] for c in RELEASE_CASES], ids=[c[0] for c in RELEASE_CASES]
)
def test_invalid_release_fields_are_named(mutate: Mutation, where: str) -> None:
    doc = copy.deepcopy(REGISTRY.release().to_dict())
    mutate(doc)
    with pytest.raises(MetadataFormatError, match=where):
        Release.from_dict(doc)


ROOT_CASES: list[tuple[str, Mutation, str]] = [
    ("missing release role", _delete("roles.release"), r"root\.roles\.release"),
    ("threshold zero", _set("roles.root.threshold", 0), r"root\.roles\.root\.threshold"),
    ("threshold above keys", _set("roles.root.threshold", 2), "exceeds"),
    ("unknown role key", _set("roles.release.keyids", ["a" * 64]), "not in keys"),
    (
        "duplicate keyids",
        lambda d: d["roles"]["root"]["keyids"].append(d["roles"]["root"]["keyids"][0]),
        "unique",
    ),
    (
        "keyid not hash of key",
        lambda d: d["keys"].update({"f" * 64: next(iter(d["keys"].values()))}),
        "does not match",
    ),
    ("expires missing", _delete("expires"), r"root\.expires"),
]


@pytest.mark.parametrize(
    ("mutate", "where"), [c[1:] for c in ROOT_CASES], ids=[c[0] for c in ROOT_CASES]
)
def test_invalid_root_fields_are_named(mutate: Mutation, where: str) -> None:
    doc = copy.deepcopy(REGISTRY.root().to_dict())
    mutate(doc)
    with pytest.raises(MetadataFormatError, match=where):
        Root.from_dict(doc)


ASSIGNMENT_CASES: list[tuple[str, Mutation, str]] = [
    ("seq zero", _set("seq", 0), r"assignment\.seq"),
    ("device with hash", _set("device_id", "dev#1"), r"assignment\.device_id"),
    ("bad model name", lambda d: d["models"].update({"../x": d["models"]["iris"]}), "models"),
    ("pinned size zero", _set("models.iris.size", 0), r"assignment\.models\.iris\.size"),
    ("pinned sha", _set("models.iris.sha256", "z" * 64), r"assignment\.models\.iris\.sha256"),
    ("models list", _set("models", []), r"assignment\.models"),
]


@pytest.mark.parametrize(
    ("mutate", "where"), [c[1:] for c in ASSIGNMENT_CASES], ids=[c[0] for c in ASSIGNMENT_CASES]
)
def test_invalid_assignment_fields_are_named(mutate: Mutation, where: str) -> None:
    doc = copy.deepcopy(REGISTRY.assignment().to_dict())
    mutate(doc)
    with pytest.raises(MetadataFormatError, match=where):
        Assignment.from_dict(doc)
