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
everything else is skipped by its length, runs of numbers and short strings in bulk. It is
iterative, reads each byte once, holds one frame per open message and stops at `MAX_DEPTH`
nested messages (protobuf's own default limit) and after `MAX_FIELDS` fields read one at a time,
so a hostile file can neither overflow the stack nor exhaust memory nor make it spin. Anything
that is not well-formed protobuf, or that uses wire types ONNX never does, is refused: a file
this scan cannot read is not run.
"""

from __future__ import annotations

import re

from edge_protocol.errors import ExternalDataError, ModelFormatError

MAX_DEPTH = 100  # nested messages; protobuf's default recursion limit
MAX_FIELDS = 16_000_000  # fields and messages read one at a time (far above real models)
NAME_CHARS = 64  # how much of a tensor name goes into a message

# Wire types (https://protobuf.dev/programming-guides/encoding/).
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MAX_FIELD_NUMBER = (1 << 29) - 1

# The messages that can hold a tensor, and their fields that lead to one:
# field number -> (message, label, repeated).
_SCHEMA: dict[str, dict[int, tuple[str, str, bool]]] = {
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
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _NODE_OP_TYPE = 8, 13, 14, 4
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
    return _Scan(data).run()


def _wanted(kind: str) -> set[int]:
    return set(_SCHEMA[kind]) | {number for k, number in _VALUES if k == kind}


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes((*out, value))


def _scalar_run(kind: str) -> re.Pattern[bytes]:
    """A run of scalar fields a `kind` message may hold that the scan has no use for.

    Attributes hold their lists of ints and floats as one field per element (ONNX does not pack
    them): a tree ensemble has millions. The regular-expression engine skips such runs, checking
    each field's shape as protobuf does (tags of at most 4 bytes, never overlong); the
    possessive `*+` keeps no backtracking state, so memory stays constant.
    """
    wanted, alternatives = _wanted(kind), []
    values = {_VARINT: rb"[\x80-\xff]{0,9}[\x00-\x7f]", _I64: rb".{8}", _I32: rb".{4}"}
    long_wanted = [_varint_bytes(n << 3 | w) for n in wanted if n >= 16 for w in values]
    avoid = b"(?!%s)" % b"|".join(map(re.escape, long_wanted)) if long_wanted else b""
    for wire, value in values.items():
        short = bytes(n << 3 | wire for n in range(1, 16) if n not in wanted)
        first = bytes(b for b in range(0x80, 0x100) if b & 7 == wire)
        tag = rb"%s[%s][\x80-\xff]{0,2}[\x01-\x7f]" % (avoid, re.escape(first))
        if short:
            tag = rb"[%s]|%s" % (re.escape(short), tag)
        alternatives.append(rb"(?:%s)%s" % (tag, value))
    return re.compile(rb"(?:%s)*+" % b"|".join(alternatives), re.DOTALL)


_SCALAR_RUNS = {kind: _scalar_run(kind) for kind in _SCHEMA}
# One-byte tags of the length-delimited fields the scan has no use for (names, strings, data).
_UNWANTED_STRINGS = {
    kind: frozenset(n << 3 | _LEN for n in range(1, 16) if n not in _wanted(kind))
    for kind in _SCHEMA
}


class _Frame:
    """One message being read: where it is, and how to name it (built only when needed)."""

    __slots__ = ("counts", "end", "kind", "label", "parent", "pos")

    def __init__(self, kind: str, pos: int, end: int, parent: _Frame | None, label: str) -> None:
        self.kind, self.pos, self.end, self.parent, self.label = kind, pos, end, parent, label
        self.counts: dict[int, int] = {}

    def path(self) -> str:
        """The message's place in the model, in ONNX field names: graph.node[2].attribute[0]."""
        labels: list[str] = []
        frame: _Frame | None = self
        while frame is not None and frame.label:
            labels.append(frame.label)
            frame = frame.parent
        return ".".join(reversed(labels))

    def child(self, number: int, start: int, end: int) -> _Frame:
        """The frame of this message's field `number`, whose payload is data[start:end]."""
        kind, label, repeated = _SCHEMA[self.kind][number]
        if repeated:
            index = self.counts[number] = self.counts.get(number, -1) + 1
            label = f"{label}[{index}]"
        return _Frame(kind, start, end, self, label)


class _Scan:
    """One depth-first walk over a model, in file order, with its budget of fields."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fields_left = MAX_FIELDS

    def run(self) -> str | None:
        """The first reference out of the model, or None."""
        stack = [_Frame("ModelProto", 0, len(self.data), None, "")]
        while stack:
            step = self.advance(stack[-1])
            if step is None:
                stack.pop()
            elif isinstance(step, str):
                return step
            elif len(stack) >= MAX_DEPTH:
                raise ModelFormatError(f"its messages are nested deeper than {MAX_DEPTH} levels")
            else:
                stack.append(step)
        return None

    def advance(self, frame: _Frame) -> _Frame | str | None:
        """Read `frame` up to its next child message (returned), a verdict, or its end."""
        if frame.kind == "TensorProto":
            return self.tensor_verdict(frame)
        while True:
            number, start = self.next_field(frame)
            if number == 0:
                return None
            if number in _SCHEMA[frame.kind]:
                return frame.child(number, start, frame.pos)
            op_type = frame.kind == "NodeProto" and number == _NODE_OP_TYPE
            if op_type and self.data[start : frame.pos] == _EP_CONTEXT:
                return f"{frame.path()} (EPContext)"

    def tensor_verdict(self, frame: _Frame) -> str | None:
        """A tensor's path if it keeps its data outside the model (any EXTERNAL seen counts)."""
        external, name = False, b""
        while True:
            number, start = self.next_field(frame)
            if number == 0:
                break
            if number == _TENSOR_DATA_LOCATION:
                external = external or _varint(self.data, start, frame.pos)[0] != 0
            elif number == _TENSOR_EXTERNAL_DATA:
                external = True
            elif number == _TENSOR_NAME:
                name = self.data[start : frame.pos]
        if not external:
            return None
        return f"{frame.path()} {_quoted(name)}" if name else frame.path()

    def next_field(self, frame: _Frame) -> tuple[int, int]:
        """Skip what needs no look, then read one field: (number, value start), 0 at the end."""
        frame.pos = self.skip(frame.kind, frame.pos, frame.end)
        if frame.pos >= frame.end:
            return 0, frame.end
        self.fields_left -= 1
        if self.fields_left < 0:
            raise ModelFormatError(f"it has more than {MAX_FIELDS} fields and messages to check")
        number, wire, pos = _tag(self.data, frame.pos, frame.end)
        expected = _expected_wire(frame.kind, number)
        if expected is not None and wire != expected:
            raise ModelFormatError(
                f"{frame.kind}.{_label(frame.kind, number)} has wire type {wire}, "
                "which its schema does not use"
            )
        start, frame.pos = _value(self.data, pos, frame.end, wire, frame.kind)
        return number, start

    def skip(self, kind: str, pos: int, end: int) -> int:
        """Skip the fields at `pos` that cannot lead to a tensor and need no check of their own."""
        data, scalars, strings = self.data, _SCALAR_RUNS[kind], _UNWANTED_STRINGS[kind]
        while True:
            pos = scalars.match(data, pos, end).end()  # type: ignore[union-attr]
            start = pos
            # A run of short strings (node inputs, a tree ensemble's node modes): one-byte tag
            # and length; a string running past the end is left to the full reading to report.
            while pos + 1 < end and data[pos] in strings and data[pos + 1] < 0x80:
                if pos + 2 + data[pos + 1] > end:
                    return pos
                pos += 2 + data[pos + 1]
            if pos == start:
                return pos


def _expected_wire(kind: str, number: int) -> int | None:
    value = _VALUES.get((kind, number))
    if value is not None:
        return value[1]
    return _LEN if number in _SCHEMA[kind] else None


def _label(kind: str, number: int) -> str:
    value = _VALUES.get((kind, number))
    return value[0] if value is not None else _SCHEMA[kind][number][1]


def _tag(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    key, pos = _varint(data, pos, end)
    number, wire = key >> 3, key & 7
    if not 0 < number <= _MAX_FIELD_NUMBER:
        raise ModelFormatError(f"it has a field number {number}, which protobuf does not allow")
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
