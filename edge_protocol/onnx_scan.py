"""Finding tensors that keep their data outside the model: a scan of the raw ONNX protobuf.

An ONNX tensor may say that its bytes live in a file ("external data": `data_location` =
EXTERNAL, with `external_data` entries naming a location, an offset and a length). onnxruntime
then reads that file, resolving the location against the working directory when the model was
given as bytes, and a model that returns such a tensor hands the file's bytes to whoever runs it.
A model that is distributed as one signed file never needs this, so both the registry (before it
builds anything) and the agent (before it creates any session) refuse every model that refers to
external data anywhere: initializers, sparse initializers, tensor and sparse-tensor attributes of
any node, every subgraph (If/Loop/Scan and any graph attribute), model-local functions and their
default attributes, and training-info graphs. An `EPContext` node is refused too: it makes
onnxruntime load a precompiled context, possibly from a file, instead of running a graph.

The scan reads the protobuf wire format directly (the agent has no `onnx` package): bytes in,
verdict out, no I/O. Only the fields of the ONNX schema that can lead to a tensor are followed;
everything else is skipped by its length. It is iterative, visits each byte once and stops at
`MAX_DEPTH` nested messages (protobuf's own default limit), so a hostile file can neither
overflow the stack nor make it spin. Anything that is not well-formed protobuf, or that uses
wire types ONNX never does, is refused: a file this scan cannot read is not run.
"""

from __future__ import annotations

from edge_protocol.errors import ExternalDataError, ModelFormatError

MAX_DEPTH = 100  # nested messages; protobuf's default recursion limit
NAME_CHARS = 64  # how much of a tensor or operator name goes into a message

# Wire types (https://protobuf.dev/programming-guides/encoding/).
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# The messages that can hold a tensor, and their fields that lead to one:
# field number -> (message, label, repeated).
_Children = dict[int, tuple[str, str, bool]]
_SCHEMA: dict[str, _Children] = {
    "ModelProto": {
        7: ("GraphProto", "graph", False),
        20: ("TrainingInfoProto", "training_info", True),
        25: ("FunctionProto", "functions", True),
    },
    "TrainingInfoProto": {
        1: ("GraphProto", "initialization", False),
        2: ("GraphProto", "algorithm", False),
    },
    "GraphProto": {
        1: ("NodeProto", "node", True),
        5: ("TensorProto", "initializer", True),
        15: ("SparseTensorProto", "sparse_initializer", True),
    },
    "FunctionProto": {
        7: ("NodeProto", "node", True),
        11: ("AttributeProto", "attribute_proto", True),
    },
    "NodeProto": {5: ("AttributeProto", "attribute", True)},
    "AttributeProto": {
        5: ("TensorProto", "t", False),
        6: ("GraphProto", "g", False),
        10: ("TensorProto", "tensors", True),
        11: ("GraphProto", "graphs", True),
        22: ("SparseTensorProto", "sparse_tensor", False),
        23: ("SparseTensorProto", "sparse_tensors", True),
    },
    "SparseTensorProto": {
        1: ("TensorProto", "values", False),
        2: ("TensorProto", "indices", False),
    },
    "TensorProto": {},
}
# Fields read by value, with the one wire type their schema gives them.
_VALUES: dict[tuple[str, int], tuple[str, int]] = {
    ("TensorProto", 8): ("name", _LEN),
    ("TensorProto", 13): ("external_data", _LEN),
    ("TensorProto", 14): ("data_location", _VARINT),
    ("NodeProto", 4): ("op_type", _LEN),
}
_EP_CONTEXT = b"EPContext"
# onnxruntime loads a buffer with this identifier at bytes 4..8 as its own flatbuffer format.
_ORT_FORMAT_ID = b"ORTM"


def check_self_contained(model: bytes) -> None:
    """Raise ExternalDataError if the model refers to data outside its bytes (ModelFormatError
    if it is not a protobuf this scan can read)."""
    where = find_external_reference(model)
    if where is not None:
        raise ExternalDataError(
            f"the model refers to external data ({where}): every tensor must be stored inside "
            "the model file, since external data makes the runtime read files of the host"
        )


def find_external_reference(model: bytes) -> str | None:
    """Where the model first refers to data outside its bytes, or None if it never does."""
    data = bytes(model)
    if not data:
        raise ModelFormatError("it is empty")
    if data[4:8] == _ORT_FORMAT_ID:
        raise ModelFormatError("it is in onnxruntime's ORT format, not an ONNX protobuf")
    # Depth-first, in file order, over (message, start, end, path, depth); each byte read once.
    stack: list[tuple[str, int, int, str, int]] = [("ModelProto", 0, len(data), "", 1)]
    while stack:
        kind, start, end, path, depth = stack.pop()
        message = _read_message(data, kind, start, end, path)
        verdict = message.verdict()
        if verdict is not None:
            return verdict
        if message.children and depth >= MAX_DEPTH:
            raise ModelFormatError(f"its messages are nested deeper than {MAX_DEPTH} levels")
        stack.extend((k, s, e, p, depth + 1) for k, s, e, p in reversed(message.children))
    return None


class _Message:
    """What the scan keeps of one message: the children to visit, a name, external or not."""

    def __init__(self, kind: str, path: str) -> None:
        self.kind, self.path = kind, path
        self.children: list[tuple[str, int, int, str]] = []
        self.counts: dict[int, int] = {}
        self.name = b""
        self.external = False

    def take(self, number: int, data: bytes, start: int, end: int) -> None:
        """Record one field whose value is data[start:end] (the payload, or the varint)."""
        value = _VALUES.get((self.kind, number))
        if value is not None:
            label = value[0]
            if label == "data_location":
                self.external = self.external or _varint(data, start, end)[0] != 0
            elif label == "external_data":
                self.external = True
            else:
                self.name = data[start:end]
        child = _SCHEMA[self.kind].get(number)
        if child is not None:
            kind, label, repeated = child
            index = self.counts[number] = self.counts.get(number, -1) + 1
            path = f"{self.path}.{label}" if self.path else label
            self.children.append((kind, start, end, f"{path}[{index}]" if repeated else path))

    def verdict(self) -> str | None:
        """Where this message itself refers out of the model, if it does."""
        if self.external:
            return f"{self.path} {_quoted(self.name)}" if self.name else self.path
        if self.kind == "NodeProto" and self.name == _EP_CONTEXT:
            return f"{self.path} (EPContext)"
        return None


def _read_message(data: bytes, kind: str, start: int, end: int, path: str) -> _Message:
    message = _Message(kind, path)
    pos = start
    while pos < end:
        number, wire, pos = _tag(data, pos, end)
        expected = _expected_wire(kind, number)
        if expected is not None and wire != expected:
            label = (_VALUES.get((kind, number)) or _SCHEMA[kind][number][1:2])[0]
            raise ModelFormatError(
                f"{kind}.{label} has wire type {wire}, which its schema does not use"
            )
        value_start, pos = _value(data, pos, end, wire, kind)
        message.take(number, data, value_start, pos)
    return message


def _expected_wire(kind: str, number: int) -> int | None:
    value = _VALUES.get((kind, number))
    if value is not None:
        return value[1]
    return _LEN if number in _SCHEMA[kind] else None


def _tag(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    key, pos = _varint(data, pos, end)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise ModelFormatError("it has a field number 0, which protobuf does not allow")
    if wire not in (_VARINT, _I64, _LEN, _I32):
        # 3 and 4 are protobuf's deprecated groups, which ONNX never uses; 6 and 7 do not exist.
        raise ModelFormatError(f"it uses wire type {wire}, which ONNX does not use")
    return number, wire, pos


def _value(data: bytes, pos: int, end: int, wire: int, kind: str) -> tuple[int, int]:
    """Where a field's value starts and ends (a length-delimited one: its payload)."""
    if wire == _VARINT:
        return pos, _varint(data, pos, end)[1]
    if wire == _LEN:
        length, start = _varint(data, pos, end)
        if length > end - start:
            raise ModelFormatError(f"a field of {kind} runs past the end of its message")
        return start, start + length
    size = 8 if wire == _I64 else 4
    if pos + size > end:
        raise ModelFormatError("it is truncated inside a fixed-size field")
    return pos, pos + size


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while shift < 70:  # a 64-bit varint takes at most 10 bytes
        if pos >= end:
            raise ModelFormatError("it is truncated inside a varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise ModelFormatError("it has a varint longer than 10 bytes")


def _quoted(name: bytes) -> str:
    text = name.decode("utf-8", errors="replace")
    return repr(text if len(text) <= NAME_CHARS else text[:NAME_CHARS] + "...")
