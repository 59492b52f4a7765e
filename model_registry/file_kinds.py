"""What a file that should be an ONNX model is instead, from its first bytes.

A pushed joblib file, a PyTorch checkpoint or a text file fails deep in the protobuf parser
with words that do not say what happened; its magic bytes say it at once. Every check is on
bytes no ONNX ModelProto starts with (a serialized model opens with field 1, `ir_version`: the
byte 0x08), so a real model is never taken for something else.
"""

from __future__ import annotations

import string

TEXT_SAMPLE_BYTES = 4096
_PRINTABLE = frozenset(string.printable) - {"\x0b", "\x0c"}
_BUILD_SKLEARN = (
    "; for a scikit-learn estimator, convert it with `model-registry build-sklearn "
    "ESTIMATOR.joblib --sample DATA.npz -o model.onnx` and push model.onnx"
)
_EXPORT = "; export the model to ONNX first and push the .onnx file"
PICKLE = "a joblib/pickle file (a pickled Python object)"
ZLIB = "a zlib-compressed file (joblib's compress=True or compress=N writes these)"
# Leading bytes -> what the file is; joblib writes each compressed format with its own magic.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "a gzip-compressed file (a compressed joblib file?)"),
    (b"BZh", "a bzip2-compressed file (a compressed joblib file?)"),
    (b"\xfd7zXZ\x00", "an xz-compressed file (a compressed joblib file?)"),
    (b"\x04\x22\x4d\x18", "an lz4-compressed file (a compressed joblib file?)"),
    (b"ZF", "an old zlib-compressed joblib file"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (a Keras .h5 model?)"),
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "an executable"),
)
PICKLED_KINDS = frozenset({PICKLE, ZLIB, *(kind for _, kind in _MAGIC[:5])})


def non_onnx_kind(data: bytes) -> str | None:
    """What `data` looks like when it is certainly not an ONNX model, or None."""
    if not data:
        return "an empty file"
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    return _binary_kind(data) or _text_kind(data)


def hint_for(kind: str) -> str:
    """What to do instead, for a kind `non_onnx_kind` returned."""
    return _BUILD_SKLEARN if kind in PICKLED_KINDS else _EXPORT


def describe(what: str, data: bytes) -> str | None:
    """`model.joblib is not an ONNX model: it looks like ...; ...`, or None if it may be one."""
    if not data:
        return f"{what} is empty"
    kind = non_onnx_kind(data)
    if kind is None:
        return None
    return f"{what} is not an ONNX model: it looks like {kind}{hint_for(kind)}"


def _binary_kind(data: bytes) -> str | None:
    kind = None
    if data[0] == 0x80 and len(data) > 1 and 2 <= data[1] <= 5:
        kind = PICKLE  # the PROTO opcode of pickle protocols 2 to 5
    elif data[:2] == b"PK":
        kind = _zip_kind(data)
    elif data[4:8] == b"TFL3":
        kind = "a TensorFlow Lite model"
    elif data[4:8] == b"ORTM":
        kind = "a model in onnxruntime's ORT format (push the .onnx it was made from)"
    elif data[0] == 0x78 and len(data) > 1 and (data[0] << 8 | data[1]) % 31 == 0:
        kind = ZLIB  # a zlib stream header: CMF 0x78 and a check value
    elif _is_safetensors(data):
        kind = "a safetensors file (weights without a graph)"
    return kind


def _zip_kind(data: bytes) -> str:
    # The first member's name sits after the 30-byte local file header.
    name_length = int.from_bytes(data[26:28], "little")
    first = data[30 : 30 + name_length].decode("utf-8", "replace")
    if first.endswith(".npy"):
        return "a NumPy .npz archive (evaluation data goes to --eval)"
    if first.endswith(("data.pkl", "/version")) or "/data/" in first:
        return "a PyTorch checkpoint (torch.save); export it with torch.onnx.export"
    if first in {"metadata.json", "config.json"}:
        return "a Keras archive"
    return "a zip archive"


def _is_safetensors(data: bytes) -> bool:
    header = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    return 2 <= header <= len(data) - 8 and data[8:9] == b"{"


def _text_kind(data: bytes) -> str | None:
    sample = data[:TEXT_SAMPLE_BYTES]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(sample) - 3:  # not just a character cut by the sample's end
            return None
        text = sample[: e.start].decode("utf-8")
    if not text or not all(ch in _PRINTABLE or ch.isprintable() for ch in text):
        return None
    opening = text.lstrip()[:1]
    if opening in {"{", "["}:
        return "a JSON document"
    if opening == "<":
        return "an XML or HTML document"
    return "a text file"
