"""Reading model uploads (multipart forms or raw bodies), enforcing the size caps while reading.

A form carries each known field at most once; a part without a name, an unknown or repeated
field, a nested multipart body, or framing that does not parse is a 400 naming what is wrong.
The `.npz` files (evaluation set, calibration rows) are read by `build.npz`, bounded by
`[api] max_dataset_mb` once decompressed, off the event loop.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, StreamReader, web
from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import HttpProcessingError
from numpy.typing import NDArray

from model_registry.api.params import clip, int_param, printable_text, show
from model_registry.build import EvalSet, parse_eval_set
from model_registry.build.champion import DEFAULT_MAX_REGRESSION, GatePolicy
from model_registry.build.npz import read_npz_bytes
from model_registry.errors import InvalidInputError, TooLargeError, UnsupportedMediaError

READ_BLOCK = 64 * 1024
FILE_FIELDS = ("model", "eval", "calibration", "reference")
TEXT_FIELDS = (
    "quantize", "label", "accuracy_limit", "allow_duplicate",
    "max_regression", "min_accuracy", "baseline", "force",
)  # fmt: skip
TEXT_FIELD_LIMIT = 1024
MAX_LABEL = 256  # what a release may carry (services.releases)
# RFC 2046: 1 to 70 characters from this set, not ending in a space.
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
# What aiohttp raises on multipart framing it cannot follow.
_FRAMING_ERRORS = (ValueError, AssertionError, HttpProcessingError, LookupError)


@dataclass(frozen=True)
class Upload:
    """A parsed model upload."""

    model: bytes
    quantize: str | None
    label: str
    eval_set: EvalSet | None
    accuracy_limit_points: float
    calibration: NDArray[Any] | None = None
    allow_duplicate: bool = False  # push a file identical to an earlier version's anyway
    gate: GatePolicy = field(default_factory=GatePolicy)
    reference: NDArray[Any] | None = None  # rows X the drift profile is made of


async def read_upload(request: web.Request, limit: int, dataset_limit: int) -> Upload:
    """Parse a multipart form (model, eval, quantize, label, accuracy_limit) or a raw body."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLargeError(f"the upload is {request.content_length} bytes; the limit is {limit}")
    if request.content_type == "multipart/form-data":
        fields = await _read_multipart(request, limit)
    elif request.content_type in ("application/octet-stream", "application/onnx"):
        fields = _query_fields(request)
        fields["model"] = await _read_body(request.content, limit, "model")
    else:
        raise UnsupportedMediaError(
            f"content type {request.content_type!r} is not accepted: send multipart/form-data "
            "with a 'model' file, or application/octet-stream with the ONNX bytes"
        )
    # Decompressing and checking the .npz files is CPU work: keep it off the event loop.
    return await asyncio.to_thread(_upload, fields, dataset_limit)


def _query_fields(request: web.Request) -> dict[str, bytes]:
    fields: dict[str, bytes] = {}
    for name, value in request.query.items():
        _check_field_name(name, fields, TEXT_FIELDS)
        fields[name] = value.encode()
    return fields


def _check_boundary(request: web.Request) -> None:
    boundary = parse_mimetype(request.headers.get("Content-Type", "")).parameters.get("boundary")
    if boundary is None or not _BOUNDARY.fullmatch(boundary):
        raise InvalidInputError(
            "multipart/form-data needs a boundary parameter of 1 to 70 characters, "
            f"not {show(boundary)}"
        )


async def _read_multipart(request: web.Request, limit: int) -> dict[str, bytes]:
    _check_boundary(request)
    fields: dict[str, bytes] = {}
    total = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidInputError("nested multipart bodies are not accepted")
            name = part.name
            if not name:
                raise InvalidInputError(
                    "a part of the form has no name: send Content-Disposition: form-data; name=..."
                )
            _check_field_name(name, fields, (*FILE_FIELDS, *TEXT_FIELDS))
            cap = limit - total if name in FILE_FIELDS else TEXT_FIELD_LIMIT
            fields[name] = await _read_part(part, cap, name)
            total += len(fields[name])
    except _FRAMING_ERRORS as e:
        if isinstance(e, InvalidInputError):
            raise
        raise InvalidInputError(f"malformed multipart/form-data body: {clip(str(e))}") from e
    return fields


def _check_field_name(name: str, seen: dict[str, bytes], known: tuple[str, ...]) -> None:
    if name not in known:
        raise InvalidInputError(f"unknown upload field {show(name)}: known are {', '.join(known)}")
    if name in seen:
        raise InvalidInputError(f"the upload has the field {name!r} twice")


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


def _upload(fields: dict[str, bytes], dataset_limit: int) -> Upload:
    model = fields.get("model")
    if not model:
        raise InvalidInputError("the upload has no 'model' file")
    quantize = _text(fields, "quantize") or None
    label = printable_text(_text(fields, "label"), "label", MAX_LABEL)
    eval_set = None
    if fields.get("eval"):
        what = "the uploaded evaluation set"
        eval_set = parse_eval_set(read_npz_bytes(fields["eval"], what, dataset_limit), what)
    limit = _points(fields, "accuracy_limit", 0)
    limit = 1.0 if limit is None else limit
    return Upload(
        model, quantize, label, eval_set, limit, _rows(fields, "calibration", dataset_limit),
        allow_duplicate=_flag(fields, "allow_duplicate"), gate=_gate(fields),
        reference=_rows(fields, "reference", dataset_limit),
    )  # fmt: skip


def _rows(fields: dict[str, bytes], name: str, dataset_limit: int) -> NDArray[Any] | None:
    """The array X of the uploaded .npz `name` (calibration or reference rows), if sent."""
    if not fields.get(name):
        return None
    what = f"the uploaded {name} rows"
    rows = read_npz_bytes(fields[name], what, dataset_limit).get("X")
    if rows is None:
        raise InvalidInputError(f"the {name} .npz has no array named X")
    return rows


def _gate(fields: dict[str, bytes]) -> GatePolicy:
    """The champion gate's fields: max_regression, min_accuracy, baseline, force."""
    baseline = _text(fields, "baseline")
    regression = _points(fields, "max_regression", 0)
    return GatePolicy(
        max_regression=DEFAULT_MAX_REGRESSION if regression is None else regression,
        min_accuracy=_points(fields, "min_accuracy", -100),
        baseline=int_param(baseline, "baseline") if baseline else None,
        force=_flag(fields, "force"),
    )


def _points(fields: dict[str, bytes], name: str, lowest: float) -> float | None:
    """A number of points from `lowest` to 100, or None when the field is absent or empty."""
    text = _text(fields, name)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError as e:
        raise InvalidInputError(f"{name} {show(text)} is not a number") from e
    if not math.isfinite(value) or not lowest <= value <= 100:
        raise InvalidInputError(f"{name} must be from {lowest} to 100 points, not {show(text)}")
    return value


def _flag(fields: dict[str, bytes], name: str) -> bool:
    text = _text(fields, name).lower()
    if text not in ("", "true", "false", "1", "0"):
        raise InvalidInputError(f"{name} must be true or false, not {show(text)}")
    return text in ("true", "1")


def _text(fields: dict[str, bytes], name: str) -> str:
    try:
        return fields.get(name, b"").decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise InvalidInputError(f"field {name!r} is not UTF-8 text") from e
