"""inference.proto stays wire-compatible with the upstream definitions tritonclient ships."""

from __future__ import annotations

from typing import Any

import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from edge_agent.server.grpc import inference_pb2 as pb

UPSTREAM = {**service_pb2.DESCRIPTOR.message_types_by_name}
UPSTREAM |= model_config_pb2.DESCRIPTOR.message_types_by_name


def _all(message: Any, path: str) -> list[tuple[str, Any]]:
    found = [(path, message)]
    for nested in message.nested_types:
        if not nested.GetOptions().map_entry:
            found += _all(nested, f"{path}.{nested.name}")
    return found


def _upstream(path: str) -> Any:
    top, *nested = path.split(".")
    message = UPSTREAM[top]
    for name in nested:
        message = message.nested_types_by_name[name]
    return message


def _kind(field: Any) -> tuple[Any, ...]:
    type_name = field.message_type or field.enum_type
    short = None if type_name is None else type_name.full_name.split(".")[-1]
    return (field.number, field.type, field.is_repeated, short)


MESSAGES = [
    entry
    for name, message in pb.DESCRIPTOR.message_types_by_name.items()
    for entry in _all(message, name)
]


@pytest.mark.parametrize(("path", "message"), MESSAGES, ids=[p for p, _ in MESSAGES])
def test_every_field_has_the_upstream_number_and_type(path: str, message: Any) -> None:
    upstream = _upstream(path)  # KeyError: a message upstream does not have
    assert len(message.fields) <= len(upstream.fields)
    for field in message.fields:
        assert field.name in upstream.fields_by_name, f"{path}.{field.name} is not upstream"
        assert _kind(field) == _kind(upstream.fields_by_name[field.name]), f"{path}.{field.name}"


def test_datatype_enum_matches() -> None:
    ours = {v.name: v.number for v in pb.DESCRIPTOR.enum_types_by_name["DataType"].values}
    theirs = model_config_pb2.DESCRIPTOR.enum_types_by_name["DataType"].values

    assert ours == {v.name: v.number for v in theirs}


def test_a_request_tritonclient_encodes_decodes_as_ours() -> None:
    theirs = service_pb2.ModelInferRequest(model_name="m", id="7", raw_input_contents=[b"ab"])
    theirs.inputs.add(name="X", datatype="FP32", shape=[1, 2])
    theirs.parameters["binary_data_output"].bool_param = False

    ours = pb.ModelInferRequest.FromString(theirs.SerializeToString())

    assert (ours.model_name, ours.id, list(ours.raw_input_contents)) == ("m", "7", [b"ab"])
    assert (ours.inputs[0].name, list(ours.inputs[0].shape)) == ("X", [1, 2])
    assert ours.parameters["binary_data_output"].WhichOneof("parameter_choice") == "bool_param"
