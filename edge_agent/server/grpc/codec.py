"""ModelInferRequest / ModelInferResponse to and from the transport-independent request types.

Inputs come as typed `contents` (the field of their datatype) or as `raw_input_contents`, one
entry per input in the binary tensor data layout. Headers, datatypes, shapes and requested
outputs are checked by the same functions as on HTTP, so the errors read the same. Outputs go
back as `raw_output_contents`, as Triton sends them, unless the request asks for typed contents
with the parameter `binary_data_output` (or an output's `binary_data`) set to false.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge_agent.errors import InvalidRequestError
from edge_agent.runtime.model import Array
from edge_agent.server.grpc import inference_pb2 as pb
from edge_agent.server.oip import (
    MAX_TENSORS,
    ROUTING_PARAMETER,
    InferRequest,
    InferResponse,
    InputTensor,
    flag,
    input_header,
    requested_outputs,
    routing_key,
)
from edge_agent.server.tensors import (
    array_datatype,
    array_to_binary,
    array_to_json,
    binary_to_array,
    json_to_array,
)

# The typed contents field of each datatype; FP16 has none and travels raw only.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A parameters map as plain values (an unset parameter reads as None)."""
    values: dict[str, Any] = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        values[key] = None if choice is None else getattr(param, choice)
    return values


def decode_request(request: pb.ModelInferRequest) -> InferRequest:
    """Decode and check a ModelInferRequest (the model's own checks come later)."""
    count = len(request.inputs)
    if not 1 <= count <= MAX_TENSORS:
        raise InvalidRequestError(f"'inputs' must be an array of 1 to {MAX_TENSORS} tensors")
    raw = request.raw_input_contents
    if raw and len(raw) != count:
        raise InvalidRequestError(
            f"raw_input_contents has {len(raw)} entries, but the request has {count} inputs: "
            "give one entry per input, in the order of the inputs"
        )
    tensors: list[InputTensor] = []
    for index, tensor in enumerate(request.inputs):
        header = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
            "parameters": parameters(tensor.parameters),
        }
        name, datatype, shape, _ = input_header(header, index)
        if any(t.name == name for t in tensors):
            raise InvalidRequestError(f"input {name!r} is given twice")
        array = _input_array(tensor, bytes(raw[index]) if raw else None, datatype, shape)
        tensors.append(InputTensor(name, datatype, shape, array))
    outputs = [{"name": o.name, "parameters": parameters(o.parameters)} for o in request.outputs]
    params = parameters(request.parameters)
    binary = "binary_data_output" not in params or flag(params, "binary_data_output", "request")
    return InferRequest(
        inputs=tuple(tensors),
        outputs=requested_outputs(outputs or None),
        id=request.id or None,
        binary_output=binary,
        routing_key=routing_key(params.get(ROUTING_PARAMETER), "parameters." + ROUTING_PARAMETER),
    )


def _input_array(
    tensor: pb.ModelInferRequest.InferInputTensor,
    raw: bytes | None,
    datatype: str,
    shape: tuple[int, ...],
) -> Array:
    where = f"input {tensor.name!r}"
    filled = [descriptor.name for descriptor, _ in tensor.contents.ListFields()]
    if raw is not None:
        if filled:
            raise InvalidRequestError(f"{where}: has both contents and raw_input_contents")
        return binary_to_array(raw, datatype, shape, where)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidRequestError(
            f"{where}: {datatype} has no typed contents; send it in raw_input_contents"
        )
    wrong = [name for name in filled if name != field]
    if wrong:
        raise InvalidRequestError(
            f"{where}: {datatype} data goes in contents.{field}, not {wrong[0]}"
        )
    values: list[Any] = list(getattr(tensor.contents, field))
    if datatype == "BYTES":
        values = [_text(value, i, where) for i, value in enumerate(values)]
    return json_to_array(values, datatype, shape, where)


def _text(value: bytes, index: int, where: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequestError(f"{where}: BYTES element {index} is not UTF-8") from e


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    """The ModelInferResponse of a result: raw outputs, or typed contents when asked for."""
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id or "",
    )
    datatypes = [array_datatype(output.array) for output in response.outputs]
    # Raw for all outputs or for none (the protocol's rule); FP16 has no typed form.
    raw = any(o.binary for o in response.outputs) or any(d not in CONTENTS_FIELD for d in datatypes)
    for output, datatype in zip(response.outputs, datatypes, strict=True):
        tensor = message.outputs.add(
            name=output.name, datatype=datatype, shape=list(output.array.shape)
        )
        if raw:
            message.raw_output_contents.append(array_to_binary(output.array))
            continue
        values = array_to_json(output.array)
        if datatype == "BYTES":
            values = [str(value).encode("utf-8") for value in values]
        getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(values)
    return message
