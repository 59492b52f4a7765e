"""Open Inference Protocol v2 inference requests and responses on the wire.

Includes the binary tensor data extension: with `Inference-Header-Content-Length: N` the
first N bytes of the body are the JSON object and the tensors whose `parameters` carry
`binary_data_size` follow, in the order of the inputs. Responses use the same layout when
an output is asked for in binary (`binary_data_output`, or `binary_data` per output).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from edge_agent.errors import InvalidRequestError
from edge_agent.runtime.model import Array
from edge_agent.server.tensors import (
    array_datatype,
    array_to_binary,
    array_to_json,
    binary_to_array,
    json_to_array,
)
from edge_protocol.metadata import DATATYPES

HEADER_LENGTH = "Inference-Header-Content-Length"
ROUTING_PARAMETER = "experiment_key"  # the request parameter that routes an experiment
ROUTING_HEADER = "Experiment-Key"  # the same as a header (a parameter wins)
MAX_ROUTING_KEY = 256
LONG_DIGITS = re.compile(rb"\d{19}")  # an integer that may not fit 64 bits (parse_json)
# The same search for small bodies, several times faster than the regular expression: every
# digit becomes "0" and every other byte a space, then a run of 19 zeros is looked for.
DIGITS_ONLY = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
NINETEEN_DIGITS = b"0" * 19
TRANSLATE_BYTES = 64 * 1024  # above this the copy translate makes costs more than it saves
MAX_RANK = 16
MAX_TENSORS = 256


@dataclass(frozen=True)
class InputTensor:
    """A decoded request input, already in the datatype and shape it declared."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: Array


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for; `binary` is None when it did not say."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request."""

    inputs: tuple[InputTensor, ...]
    outputs: tuple[RequestedOutput, ...] | None = None  # None: every output of the model
    id: str | None = None
    binary_output: bool = False  # request-level `binary_data_output`
    routing_key: str | None = None  # which experiment variant answers (docs/inference-api.md)


@dataclass(frozen=True)
class OutputTensor:
    """One output to send back, and whether it goes as binary data."""

    name: str
    array: Array
    binary: bool = False


@dataclass(frozen=True)
class InferResponse:
    """An inference result ready to encode."""

    model_name: str
    model_version: str
    outputs: tuple[OutputTensor, ...]
    id: str | None = None


def parse_json(data: bytes, what: str) -> Any:
    """Parse JSON bytes; any failure is the client's (400), never a 500.

    orjson parses what strict RFC 8259 UTF-8 JSON is; whatever it refuses goes to the
    standard library, which decides as it always has: it reads NaN and Infinity (refused
    later, by name, by the non-finite check), UTF-16 and UTF-32, a byte-order mark, and its
    error messages say where the body goes wrong. orjson reads an integer beyond 64 bits as a
    float where the standard library keeps it exact (and the tensor check names it): a body
    with a run of 19 digits or more, which every such integer has, goes to the latter too.
    """
    if not _has_long_integer(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError too
        raise InvalidRequestError(f"{what} is not valid JSON: {e}") from e


def _has_long_integer(data: bytes) -> bool:
    """Whether `data` holds a run of 19 digits or more (parse_json)."""
    if len(data) <= TRANSLATE_BYTES:
        return NINETEEN_DIGITS in data.translate(DIGITS_ONLY)
    return LONG_DIGITS.search(data) is not None


def dump_json(value: Any) -> bytes:
    """Compact JSON bytes, as `json.dumps(value, separators=(",", ":"))` writes them.

    orjson writes NaN and infinities as null where the standard library writes NaN and
    Infinity, so an answer that may hold one (its text has a null) is written by the latter.
    """
    try:
        encoded = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        encoded = b"null"
    if b"null" not in encoded:
        return encoded
    return json.dumps(value, separators=(",", ":")).encode()


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """Validate the Inference-Header-Content-Length header against the body length."""
    if value is None:
        return None
    if not value.strip().isdigit():
        raise InvalidRequestError(f"{HEADER_LENGTH} must be a byte count, got {value!r}")
    length = int(value)
    if length > body_length:
        raise InvalidRequestError(
            f"{HEADER_LENGTH} is {length}, but the body has only {body_length} bytes"
        )
    return length


def decode_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """Decode an inference request body (JSON, or JSON + binary tensors)."""
    split = len(body) if header_length is None else header_length
    obj = parse_json(body[:split], "the inference request")
    if not isinstance(obj, dict):
        raise InvalidRequestError("the inference request must be a JSON object")
    parameters = _parameters(obj.get("parameters"), "request")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs or len(raw_inputs) > MAX_TENSORS:
        hint = ""
        if raw_inputs is None and "instances" in obj:
            hint = '; a body of "instances" goes to POST /v1/models/{model}:predict'
        raise InvalidRequestError(f"'inputs' must be an array of 1 to {MAX_TENSORS} tensors{hint}")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequestError("'id' must be a string")
    return InferRequest(
        inputs=_decode_inputs(raw_inputs, memoryview(body)[split:]),
        outputs=requested_outputs(obj.get("outputs")),
        id=request_id,
        binary_output=flag(parameters, "binary_data_output", "request"),
        routing_key=routing_key(
            parameters.get(ROUTING_PARAMETER), "parameters." + ROUTING_PARAMETER
        ),
    )


def routing_key(value: Any, where: str) -> str | None:
    """A request's experiment key: 1 to 256 characters, or None when it has none."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ROUTING_KEY:
        raise InvalidRequestError(f"{where} must be a string of 1 to {MAX_ROUTING_KEY} characters")
    return value


def _decode_inputs(raw_inputs: list[Any], binary: memoryview) -> tuple[InputTensor, ...]:
    offset, tensors, seen = 0, [], set()
    for index, raw in enumerate(raw_inputs):
        name, datatype, shape, params = input_header(raw, index)
        if name in seen:
            raise InvalidRequestError(f"input {name!r} is given twice")
        seen.add(name)
        where = f"input {name!r}"
        size = params.get("binary_data_size")
        if size is None:
            if "data" not in raw:
                raise InvalidRequestError(f"{where}: needs 'data' or parameters.binary_data_size")
            array = json_to_array(raw["data"], datatype, shape, where)
        else:
            if "data" in raw:
                raise InvalidRequestError(f"{where}: has both 'data' and binary_data_size")
            chunk = _binary_chunk(binary, offset, size, where)
            offset += len(chunk)
            array = binary_to_array(chunk, datatype, shape, where)
        tensors.append(InputTensor(name, datatype, shape, array))
    if offset != len(binary):
        raise InvalidRequestError(
            f"the body has {len(binary)} bytes after the JSON header, but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    return tuple(tensors)


def _binary_chunk(binary: memoryview, offset: int, size: Any, where: str) -> bytes:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidRequestError(f"{where}: binary_data_size must be a non-negative integer")
    if offset + size > len(binary):
        raise InvalidRequestError(
            f"{where}: binary_data_size {size} runs past the end of the body "
            f"({len(binary) - offset} bytes left; is {HEADER_LENGTH} set?)"
        )
    return bytes(binary[offset : offset + size])


def input_header(raw: Any, index: int) -> tuple[str, str, tuple[int, ...], dict[str, Any]]:
    """Check one input's name, datatype, shape and parameters (both transports)."""
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"inputs[{index}] must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"inputs[{index}].name must be a non-empty string")
    where = f"input {name!r}"
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise InvalidRequestError(
            f"{where}: datatype {datatype!r} is not one of {', '.join(sorted(DATATYPES))}"
        )
    shape = raw.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InvalidRequestError(
            f"{where}: shape must be an array of at most {MAX_RANK} non-negative integers"
        )
    return name, datatype, tuple(shape), _parameters(raw.get("parameters"), where)


def requested_outputs(raw: Any) -> tuple[RequestedOutput, ...] | None:
    """Check the `outputs` array of a request (both transports)."""
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_TENSORS:
        raise InvalidRequestError(f"'outputs' must be an array of at most {MAX_TENSORS} objects")
    outputs = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidRequestError(f"outputs[{index}] must be an object with a string 'name'")
        where = f"output {item['name']!r}"
        params = _parameters(item.get("parameters"), where)
        if params.get("classification"):
            raise InvalidRequestError(f"{where}: the classification extension is not supported")
        binary = flag(params, "binary_data", where) if "binary_data" in params else None
        outputs.append(RequestedOutput(item["name"], binary))
    return tuple(outputs)


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"{where}: 'parameters' must be a JSON object")
    return raw


def flag(parameters: dict[str, Any], key: str, where: str) -> bool:
    """A boolean parameter, False when absent."""
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{where}: parameters.{key} must be true or false")
    return value


def encode_infer_response(response: InferResponse) -> tuple[bytes, int | None]:
    """Encode a response; the int is the JSON header length when binary data follows."""
    outputs, blobs = [], []
    for output in response.outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": array_datatype(output.array),
            "shape": list(output.array.shape),
        }
        if output.binary:
            blob = array_to_binary(output.array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array_to_json(output.array)
        outputs.append(entry)
    header: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id is not None:
        header["id"] = response.id
    header["outputs"] = outputs
    encoded = dump_json(header)
    if not blobs:
        return encoded, None
    return encoded + b"".join(blobs), len(encoded)
