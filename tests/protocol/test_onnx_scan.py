"""The ONNX scanner: every place a tensor can refer to external data, and hostile protobufs."""

from __future__ import annotations

import contextlib
import random
import tracemalloc

import pytest

from edge_protocol import check_self_contained, find_external_reference, onnx_scan
from edge_protocol.errors import ExternalDataError, ModelFormatError
from edge_protocol.onnx_scan import MAX_DEPTH
from tests.support import external_data
from tests.support.models import ModelSet

LOCATION = "registry-home/secrets/cli-token"
LENGTH = 48


def test_every_place_of_the_schema_is_covered() -> None:
    assert set(external_data.WHERE) == set(external_data.EVERY_PLACE)


@pytest.mark.parametrize("variant", sorted(external_data.EVERY_PLACE))
def test_external_data_is_found_wherever_it_hides(variant: str) -> None:
    model = external_data.EVERY_PLACE[variant](LOCATION, LENGTH).SerializeToString()
    assert find_external_reference(model) == external_data.WHERE[variant]
    with pytest.raises(ExternalDataError) as caught:
        check_self_contained(model)
    assert caught.value.reason == "external_data"
    assert external_data.WHERE[variant] in str(caught.value)
    assert LOCATION not in str(caught.value), "the location is not echoed"


def test_inline_models_pass(onnx_models: ModelSet) -> None:
    for built in (onnx_models.classifier, onnx_models.regressor):
        data = built.onnx_path.read_bytes()
        assert find_external_reference(data) is None
        check_self_contained(data)
    assert find_external_reference(external_data.inline(LENGTH).SerializeToString()) is None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _nested_graphs(levels: int) -> bytes:
    """A model whose graph has a node with a graph attribute, `levels` times over."""
    graph = b""
    for _ in range(levels):
        graph = _field(1, _field(5, _field(6, graph)))  # graph.node.attribute.g
    return _field(7, graph)


def _tensor_model(tensor: bytes) -> bytes:
    return _field(7, _field(5, tensor))  # model.graph.initializer


def test_nesting_up_to_the_limit_is_read() -> None:
    levels = (MAX_DEPTH - 2) // 3  # model + graph, then three messages per level
    assert find_external_reference(_nested_graphs(levels)) is None


HOSTILE: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "empty"),
    "nested far too deep": (_nested_graphs(3000), "nested deeper than"),
    "nested one level too deep": (_nested_graphs((MAX_DEPTH - 2) // 3 + 1), "nested deeper"),
    "length past the end": (_varint(7 << 3 | 2) + _varint(1 << 40), "past the end"),
    "overlong varint": (b"\x08" + b"\xff" * 11 + b"\x01", "varint"),
    "unterminated varint": (b"\x08\xff\xff", "truncated"),
    "group wire type": (_varint(1 << 3 | 3), "wire type 3"),
    "end group wire type": (_varint(1 << 3 | 4), "wire type 4"),
    "wire type 6": (_varint(1 << 3 | 6), "wire type 6"),
    "field number 0": (b"\x02\x00", "field number 0"),
    "fixed64 cut short": (_varint(1 << 3 | 1) + b"\x00\x00", "truncated"),
    "graph as a varint": (_varint(7 << 3 | 0) + b"\x01", "graph"),
    "data_location as bytes": (_tensor_model(_field(14, b"\x01")), "data_location"),
    "onnxruntime format": (b"\x10\x00\x00\x00ORTM" + bytes(64), "ORT format"),
    "training_info as a varint": (b"\xa0\x01\x01", "training_info"),  # field 20, two-byte tag
    "field number past 2**29": (b"\xf8\xff\xff\xff\x1f\x01", "field number"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_protobufs_are_refused_with_a_clear_error(case: str) -> None:
    data, words = HOSTILE[case]
    with pytest.raises(ModelFormatError) as caught:
        find_external_reference(data)
    assert words in str(caught.value)
    with pytest.raises(ModelFormatError):
        check_self_contained(data)


def test_a_model_cut_short_is_refused(onnx_models: ModelSet) -> None:
    data = onnx_models.classifier.onnx_path.read_bytes()
    # The graph is nearly the whole file: every cut below lands inside it.
    for end in (len(data) // 3, len(data) // 2, len(data) - 1):
        with pytest.raises(ModelFormatError, match=r"past the end|truncated"):
            find_external_reference(data[:end])


def test_a_tensor_data_location_set_then_reset_is_still_refused() -> None:
    # Protobuf keeps the last value of a repeated scalar field; any EXTERNAL seen is refused.
    tensor = _field(8, b"W") + b"\x70\x01" + b"\x70\x00"  # data_location 1, then 0
    assert find_external_reference(_tensor_model(tensor)) == "graph.initializer[0] 'W'"


def test_an_epcontext_node_is_refused() -> None:
    node = _field(4, b"EPContext") + _field(7, b"com.microsoft")
    where = find_external_reference(_field(7, _field(1, node)))
    assert where == "graph.node[0] (EPContext)"


def test_random_bytes_never_crash_the_scanner() -> None:
    rng = random.Random(20240601)
    for _ in range(300):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 512)))
        with contextlib.suppress(ModelFormatError):  # anything else fails the test
            find_external_reference(data)


def test_many_small_fields_are_read_to_the_end() -> None:
    data = b"\x08\x01" * 500_000 + _tensor_model(_field(8, b"W") + b"\x70\x01")
    assert find_external_reference(data) == "graph.initializer[0] 'W'"


def test_memory_stays_bounded_by_the_depth_not_the_size() -> None:
    # 50 000 empty nodes: a scan that listed the children first would hold all of them at once.
    nodes = _field(1, b"") * 50_000
    data = _field(7, nodes + _field(5, _field(8, b"W") + b"\x70\x01"))
    tracemalloc.start()
    try:
        assert find_external_reference(data) == "graph.initializer[0] 'W'"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_an_overlong_tag_does_not_hide_data_location() -> None:
    # Field 14 as a varint is tag 0x70; 0xf0 0x00 is the same tag in two bytes.
    tensor = _field(8, b"W") + b"\xf0\x00\x01"
    assert find_external_reference(_tensor_model(tensor)) == "graph.initializer[0] 'W'"


def test_runs_of_numbers_with_long_tags_are_skipped_and_checked() -> None:
    # AttributeProto.type (field 20) has a two-byte tag; a cut inside the run is still found.
    attribute = _field(1, b"a") + b"\xa0\x01\x07" * 10_000
    model = _field(7, _field(1, _field(5, attribute)))
    assert find_external_reference(model) is None
    cut = _field(7, _field(1, _field(5, attribute + b"\xa0\x01\xff")))
    with pytest.raises(ModelFormatError, match="truncated inside a varint"):
        find_external_reference(cut)


def test_work_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_scan, "MAX_FIELDS", 1000)
    assert find_external_reference(_field(7, _field(1, b"") * 999)) is None
    with pytest.raises(ModelFormatError, match="more than 1000 fields"):
        find_external_reference(_field(7, _field(1, b"") * 1000))
