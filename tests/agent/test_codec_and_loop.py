"""The fast JSON codec answers as the standard library did, and the loop falls back to asyncio."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from typing import Any

import pytest

from edge_agent import eventloop
from edge_agent.errors import InvalidRequestError
from edge_agent.server.oip import dump_json, parse_json

# Bodies orjson refuses or reads otherwise: they are read as the standard library reads them.
STDLIB_ONLY = [
    pytest.param(b'{"data": [NaN, Infinity, -Infinity]}', id="nan-and-infinity"),
    pytest.param(b'{"n": 123456789012345678901234567890}', id="integer-beyond-64-bits"),
    pytest.param(b"[-9223372036854775809, 18446744073709551616]", id="just-beyond-int64-uint64"),
    pytest.param('{"a": [1, 2]}'.encode("utf-16"), id="utf-16"),
    pytest.param(b'\xef\xbb\xbf{"a": 1}', id="byte-order-mark"),
    pytest.param(b'{"s": "\\ud800"}', id="lone-surrogate"),
]


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("body", STDLIB_ONLY)
def test_what_orjson_refuses_is_read_as_the_standard_library_reads_it(body: bytes) -> None:
    assert same(parse_json(body, "the body"), json.loads(body))


@pytest.mark.parametrize(
    "body",
    [b'{"inputs": [', b"\xff\xfe\x00{", b"[1, 2,]", b"{'a': 1}", b"[" * 5000 + b"]" * 5000],
)
def test_invalid_json_gets_the_standard_library_message(body: bytes) -> None:
    try:
        json.loads(body)
    except (ValueError, RecursionError) as e:
        expected = f"the body is not valid JSON: {e}"
    with pytest.raises(InvalidRequestError) as caught:
        parse_json(body, "the body")
    assert str(caught.value) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"model_name": "m", "outputs": [{"data": [0.1, 2.5e-8, 1e300, -3, True]}]},
        {"id": "null", "text": "ünïcødé \u2028", "nested": {"empty": [], "none": None}},
    ],
)
def test_answers_decode_as_the_standard_library_wrote_them(value: Any) -> None:
    assert same(json.loads(dump_json(value)), value)


def test_an_answer_with_nan_or_infinity_is_written_by_the_standard_library() -> None:
    value = {"outputs": [{"data": [float("nan"), float("inf"), -float("inf"), 1.5]}]}
    assert dump_json(value) == json.dumps(value, separators=(",", ":")).encode()


def test_the_loop_is_uvloop_when_installed_and_asyncio_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def loop_type() -> str:
        return type(asyncio.get_running_loop()).__module__

    installed = eventloop.loop_factory() is not None
    assert eventloop.run(loop_type()).startswith("uvloop" if installed else "asyncio")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now raises ImportError
    assert eventloop.loop_factory() is None
    assert eventloop.loop_name() == "asyncio"
    assert eventloop.run(loop_type()).startswith("asyncio")
