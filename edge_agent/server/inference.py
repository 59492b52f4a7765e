"""One inference exchange, whichever lane carried the request: body bytes and two headers in,
the decoded answer out. The aiohttp handler and the fast lane (fastlane.py) both call it, so
they decode, route and encode alike."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from edge_agent.server.dataplane import DataPlane
from edge_agent.server.oip import (
    ROUTING_HEADER,
    decode_infer_request,
    encode_infer_response,
    parse_header_length,
    routing_key,
)

OFFLOAD_BYTES = 256 * 1024  # bodies above this are decoded in a thread, not on the loop
COMPRESS_BYTES = 1024  # answers above this are compressed when the client accepts it
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Answer:
    """An encoded inference answer."""

    payload: bytes
    json_length: int | None  # the JSON header's length when binary data follows it
    model_version: str  # the version that answered


async def off_loop(size: int, function: Callable[..., T], *args: Any) -> T:
    """`function(*args)`, in a thread when it works on more than OFFLOAD_BYTES."""
    if size > OFFLOAD_BYTES:
        return await asyncio.to_thread(function, *args)
    return function(*args)


async def infer_exchange(
    dataplane: DataPlane,
    model: str,
    version: str | None,
    body: bytes,
    *,
    header_length: str | None,
    routing: str | None,
) -> Answer:
    """Decode `body` (with its Inference-Header-Content-Length and Experiment-Key header
    values), run it on `model` (`version`), encode the answer."""
    dataplane.answering.begin()  # from the decoding on, not only in dataplane.infer
    try:
        split = parse_header_length(header_length, len(body))
        parsed = await off_loop(len(body), decode_infer_request, body, split)
        if parsed.routing_key is None and routing is not None:
            where = f"the {ROUTING_HEADER} header"
            parsed = replace(parsed, routing_key=routing_key(routing, where))
        result = await dataplane.infer(model, version, parsed)
        payload, json_length = encode_infer_response(result)
    finally:
        dataplane.answering.end()
    return Answer(payload, json_length, result.model_version)
