"""Reading model uploads (multipart forms or raw bodies), enforcing the size cap while reading."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import BodyPartReader, StreamReader, web
from numpy.typing import NDArray

from model_registry.build import EvalSet, parse_eval_set
from model_registry.errors import InvalidInputError, TooLargeError, UnsupportedMediaError

READ_BLOCK = 64 * 1024
FILE_FIELDS = ("model", "eval", "calibration")
TEXT_FIELDS = ("quantize", "label", "accuracy_limit")
TEXT_FIELD_LIMIT = 1024


@dataclass(frozen=True)
class Upload:
    """A parsed model upload."""

    model: bytes
    quantize: str | None
    label: str
    eval_set: EvalSet | None
    accuracy_limit_points: float
    calibration: NDArray[Any] | None = None


async def read_upload(request: web.Request, limit: int) -> Upload:
    """Parse a multipart form (model, eval, quantize, label, accuracy_limit) or a raw body."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLargeError(f"the upload is {request.content_length} bytes; the limit is {limit}")
    if request.content_type == "multipart/form-data":
        return await _read_multipart(request, limit)
    if request.content_type in ("application/octet-stream", "application/onnx"):
        model = await _read_body(request.content, limit, "model")
        return _upload({"model": model, **{k: v.encode() for k, v in request.query.items()}})
    raise UnsupportedMediaError(
        f"content type {request.content_type!r} is not accepted: send multipart/form-data "
        "with a 'model' file, or application/octet-stream with the ONNX bytes"
    )


async def _read_multipart(request: web.Request, limit: int) -> Upload:
    fields: dict[str, bytes] = {}
    reader = await request.multipart()
    total = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            raise InvalidInputError("nested multipart bodies are not accepted")
        cap = limit - total if part.name in FILE_FIELDS else TEXT_FIELD_LIMIT
        fields[part.name] = await _read_part(part, cap, part.name)
        total += len(fields[part.name])
    return _upload(fields)


async def _read_part(part: BodyPartReader, cap: int, name: str) -> bytes:
    buffer = bytearray()
    while chunk := await part.read_chunk(READ_BLOCK):
        _append(buffer, chunk, cap, name)
    return bytes(buffer)


async def _read_body(stream: StreamReader, cap: int, name: str) -> bytes:
    buffer = bytearray()
    async for chunk in stream.iter_chunked(READ_BLOCK):
        _append(buffer, chunk, cap, name)
    return bytes(buffer)


def _append(buffer: bytearray, chunk: bytes, cap: int, name: str) -> None:
    # Checked per block, so an oversized upload is refused after at most one block too many.
    buffer += chunk
    if len(buffer) > cap:
        raise TooLargeError(f"'{name}' is larger than the limit of {cap} bytes")


def _upload(fields: dict[str, bytes]) -> Upload:
    unknown = set(fields) - {*FILE_FIELDS, *TEXT_FIELDS}
    if unknown:
        raise InvalidInputError(f"unknown upload field {sorted(unknown)[0]!r}")
    model = fields.get("model")
    if not model:
        raise InvalidInputError("the upload has no 'model' file")
    quantize = _text(fields, "quantize") or None
    limit_text = _text(fields, "accuracy_limit") or "1.0"
    try:
        accuracy_limit = float(limit_text)
    except ValueError as e:
        raise InvalidInputError(f"accuracy_limit {limit_text!r} is not a number") from e
    eval_set = (
        _eval_set(fields["eval"], "the uploaded evaluation set") if fields.get("eval") else None
    )
    calibration = None
    if fields.get("calibration"):
        calibration = _npz(fields["calibration"], "the uploaded calibration rows").get("X")
        if calibration is None:
            raise InvalidInputError("the calibration .npz has no array named X")
    return Upload(model, quantize, _text(fields, "label"), eval_set, accuracy_limit, calibration)


def _text(fields: dict[str, bytes], name: str) -> str:
    try:
        return fields.get(name, b"").decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise InvalidInputError(f"field {name!r} is not UTF-8 text") from e


def _eval_set(data: bytes, what: str) -> EvalSet:
    return parse_eval_set(_npz(data, what), what)


def _npz(data: bytes, what: str) -> dict[str, NDArray[Any]]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError) as e:
        raise InvalidInputError(f"{what} is not a valid .npz file: {e}") from e
