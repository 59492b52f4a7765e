"""Canonical JSON: property tests for round trip, byte stability and float rejection."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_protocol.canonical import INT_MAX, INT_MIN, canonical_bytes, parse_json
from edge_protocol.errors import CanonicalJSONError

scalars = st.none() | st.booleans() | st.integers(INT_MIN, INT_MAX) | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


def _shuffled(value: Any, rng: random.Random) -> Any:
    """The same JSON value with every object's keys inserted in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


@given(json_values)
def test_round_trip_returns_the_same_value(value: Any) -> None:
    assert parse_json(canonical_bytes(value)) == value


@given(json_values, st.randoms())
def test_bytes_do_not_depend_on_key_order_or_reencoding(value: Any, rng: random.Random) -> None:
    encoded = canonical_bytes(value)
    assert canonical_bytes(_shuffled(value, rng)) == encoded
    assert canonical_bytes(parse_json(encoded)) == encoded


@given(json_values)
def test_output_has_no_insignificant_whitespace(value: Any) -> None:
    encoded = canonical_bytes(value)
    assert encoded == json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


@given(st.floats(allow_nan=True, allow_infinity=True), json_values)
def test_floats_are_refused_anywhere_in_the_value(number: float, context: Any) -> None:
    for container in ({"x": number}, [context, number], {"a": [{"b": number}]}):
        with pytest.raises(CanonicalJSONError):
            canonical_bytes(container)


def test_known_vector() -> None:
    value = {"b": 1, "a": [True, None, 'é\n"\\'], "Z": {"y": -5}}
    assert canonical_bytes(value) == '{"Z":{"y":-5},"a":[true,null,"é\\n\\"\\\\"],"b":1}'.encode()


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ({1: "a"}, "not a string"),
        ({"x": 2**63}, "64-bit"),
        ({"x": INT_MIN - 1}, "64-bit"),
        ({"x": b"raw"}, "not a JSON value"),
        ({"x": {1, 2}}, "not a JSON value"),
        ({"x": "\ud800"}, "not valid Unicode"),
        ({"\ud800": 1}, "not valid Unicode"),
    ],
)
def test_unrepresentable_values_are_refused(value: Any, complaint: str) -> None:
    with pytest.raises(CanonicalJSONError, match=complaint):
        canonical_bytes(value)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b'{"x": 1.5}', "float"),
        (b'{"x": 1e3}', "float"),
        (b'{"x": NaN}', "NaN"),
        (b'{"x": Infinity}', "Infinity"),
        (b'{"x": -Infinity}', "Infinity"),
        (b'{"x": 1, "x": 2}', "duplicate"),
        (b'{"x": "\xff"}', "UTF-8"),
        (b'{"x": ', "not JSON"),
        (b"[" * 100 + b"]" * 100, "deeper"),
    ],
)
def test_parser_refuses_what_canonical_json_cannot_hold(data: bytes, complaint: str) -> None:
    with pytest.raises(CanonicalJSONError, match=complaint):
        parse_json(data)
