"""The drift profile in a signed release: it round-trips, the signature covers it, and a
device refuses a malformed one (`malformed`, naming the field) while releases without one
keep working."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from edge_protocol import Bins, InputProfile, OutputProfile, Profile, TrustedState
from edge_protocol.errors import MalformedDocumentError, SignatureThresholdError
from tests.protocol.factory import DEVICE, MODEL, FrozenClock, Registry, sign

PROFILE = Profile(
    rows=100,
    inputs={
        "input": InputProfile(
            (Bins((-0.5, 0.0, 0.5), (25, 25, 25, 25)), Bins((1e-05, 2.5), (30, 30, 40)))
        )
    },
    output=OutputProfile("output", bins=Bins((0.25,), (60, 40))),
)


def _verify(registry: Registry, data: bytes) -> Any:
    state = TrustedState(registry.root_bytes(), device_id=DEVICE, clock=FrozenClock())
    release = registry.release()
    return state.verify_release(data, MODEL, registry.assignment(release=release).models[MODEL])


def test_a_profile_travels_in_the_release_and_comes_back_equal() -> None:
    registry = Registry()
    release = registry.release(profile=PROFILE)
    signed = release.to_dict()
    assert signed["profile"]["inputs"]["input"]["columns"][1]["edges"] == ["1e-05", "2.5"]
    verified = _verify(registry, registry.release_bytes(release))
    assert verified.profile == PROFILE
    assert verified.to_dict() == signed


def test_a_release_without_a_profile_keeps_working() -> None:
    registry = Registry()
    verified = _verify(registry, registry.release_bytes(registry.release()))
    assert verified.profile is None
    assert "profile" not in verified.to_dict()


def test_the_release_signature_covers_the_profile() -> None:
    registry = Registry()
    envelope = registry.release_bytes(registry.release(profile=PROFILE))
    forged = envelope.replace(b'"counts":[25,25,25,25]', b'"counts":[97,1,1,1]')
    assert forged != envelope
    with pytest.raises(SignatureThresholdError):
        _verify(registry, forged)


def _profile_dict() -> dict[str, Any]:
    return copy.deepcopy(PROFILE.to_dict())


def _column(p: dict[str, Any]) -> dict[str, Any]:
    column: dict[str, Any] = p["inputs"]["input"]["columns"][0]
    return column


Breakage = Callable[[dict[str, Any]], None]
MALFORMED: list[tuple[str, Breakage, str]] = [
    ("a number for an edge", lambda p: _column(p).update(edges=[-1, 0, 1]), "edges[0]"),
    ("edges not increasing", lambda p: _column(p).update(edges=["0", "0", "1"]), "edges[1]"),
    ("an infinite edge", lambda p: _column(p).update(edges=["1e999", "2", "3"]), "edges[0]"),
    ("one count too few", lambda p: _column(p).update(counts=[1, 2, 3]), "counts"),
    ("a negative count", lambda p: _column(p).update(counts=[1, -2, 3, 4]), "counts[1]"),
    ("a boolean count", lambda p: _column(p).update(counts=[True, 2, 3, 4]), "counts[0]"),
    ("too many bins", lambda p: _column(p).update(
        edges=[str(i) for i in range(16)], counts=[1] * 17), "edges"),
    ("an input the release lacks", lambda p: p["inputs"].update(other=p["inputs"]["input"]),
     "inputs.other"),
    ("fewer columns than the input has", lambda p: p["inputs"]["input"]["columns"].pop(),
     "input.columns"),
    ("more than 64 columns", lambda p: p["inputs"]["input"].update(
        columns=[_column(p)] * 65), "columns"),
    ("no rows", lambda p: p.update(rows=0), "profile.rows"),
    ("classes and bins at once", lambda p: p["output"].update(classes={"a": 1}), "output"),
    ("a negative class count", lambda p: p.update(
        output={"name": "output", "classes": {"a": -1}}), "classes.a"),
    ("257 classes", lambda p: p.update(
        output={"name": "output", "classes": {str(i): 1 for i in range(257)}}), "classes"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "breakage", "path"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_profile_is_refused_naming_the_field(
    what: str, breakage: Breakage, path: str
) -> None:
    registry = Registry()
    signed = registry.release(profile=PROFILE).to_dict()
    profile = _profile_dict()
    breakage(profile)
    signed["profile"] = profile
    with pytest.raises(MalformedDocumentError) as caught:
        _verify(registry, sign(signed, *registry.release_keys))
    assert caught.value.reason == "malformed"
    assert "release.profile" in str(caught.value), what
    assert path in str(caught.value), what
