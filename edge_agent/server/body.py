"""Reading request bodies: media type and encoding checks, and the size cap while streaming."""

from __future__ import annotations

from aiohttp import hdrs, web

from edge_agent.errors import PayloadTooLargeError, UnsupportedMediaTypeError

ACCEPTED_TYPES = frozenset({"application/json", "application/octet-stream"})
# aiohttp undoes gzip and deflate while streaming; the cap counts the decoded bytes.
ACCEPTED_ENCODINGS = frozenset({"identity", "gzip", "deflate"})
CHUNK_BYTES = 64 * 1024


def check_media(request: web.Request) -> None:
    """Refuse Content-Types and Content-Encodings the server cannot read."""
    if hdrs.CONTENT_TYPE in request.headers and request.content_type not in ACCEPTED_TYPES:
        raise UnsupportedMediaTypeError(
            f"Content-Type {request.content_type!r} is not accepted; send application/json "
            "(with curl: -H 'Content-Type: application/json') or application/octet-stream"
        )
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding not in ACCEPTED_ENCODINGS:
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {encoding!r} is not accepted; use identity, gzip or deflate"
        )


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The request body, refused as soon as it is known to exceed `max_bytes`."""
    check_media(request)
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise PayloadTooLargeError(
            f"the body is {declared} bytes; this server accepts at most {max_bytes}"
        )
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLargeError(f"the body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
