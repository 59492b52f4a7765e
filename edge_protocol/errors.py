"""Errors raised by edge_protocol: one root, split by cause.

`FormatError` and its children mean "these bytes are not a well-formed document";
`RejectedError` and its children mean "a well-formed document that the trust rules refuse".
Every rejection carries a stable `reason` code: agents publish it in their `rejected` event
and docs/protocol.md lists them, so the codes are part of the wire contract.
"""

from __future__ import annotations

from typing import ClassVar


class ProtocolError(Exception):
    """Root of every error edge_protocol raises."""


# --- malformed input -------------------------------------------------------------------


class FormatError(ProtocolError, ValueError):
    """Bytes or objects that do not follow the wire format."""


class CanonicalJSONError(FormatError):
    """A value that canonical JSON cannot represent (float, NaN, non-string key, ...)."""


class MetadataFormatError(FormatError):
    """A signed document whose fields do not match the schema of its type."""


class MessageFormatError(FormatError):
    """An unsigned device message (state, event, telemetry) that does not match its schema."""


class TopicError(FormatError):
    """A topic or a topic component (model name, device id) that is not allowed."""


class KeyFormatError(FormatError):
    """A key that cannot be loaded: bad PEM, wrong type, wrong passphrase."""


class ModelFormatError(FormatError):
    """Model bytes that are not a well-formed ONNX protobuf (truncated, too deeply nested, ...)."""


# --- trust rejections ------------------------------------------------------------------


class RejectedError(ProtocolError):
    """A document or artifact that the trust rules refuse; `reason` is its wire code."""

    reason: ClassVar[str] = "rejected"


class OversizedDocumentError(RejectedError):
    """A document larger than the cap, refused before it is parsed."""

    reason = "oversized_document"


class MalformedDocumentError(RejectedError):
    """A document that is not a well-formed signed envelope of the expected type."""

    reason = "malformed"


class SignatureThresholdError(RejectedError):
    """Fewer valid signatures by keys of the required role than its threshold."""

    reason = "signature_threshold"


class WrongTypeError(RejectedError):
    """A document whose `_type` is not the one expected where it was received."""

    reason = "wrong_type"


class ExpiredError(RejectedError):
    """A document whose `expires` time has passed (indefinite-freeze defence)."""

    reason = "expired"


class RootVersionError(RejectedError):
    """A root that is not exactly the next version of the trusted root."""

    reason = "root_version"


class WrongDeviceError(RejectedError):
    """An assignment addressed to another device."""

    reason = "wrong_device"


class ReplayedAssignmentError(RejectedError):
    """An assignment whose `seq` is not greater than the last accepted one."""

    reason = "replayed_seq"


class ReleaseMismatchError(RejectedError):
    """A release whose model, version, sha256 or size differs from what the assignment pins."""

    reason = "release_mismatch"


class ChunkIndexError(RejectedError):
    """A chunk index outside the artifact's chunk list."""

    reason = "chunk_index"


class ChunkHashError(RejectedError):
    """A chunk whose sha256 differs from the release's chunk list."""

    reason = "chunk_hash"


class ChunkSizeError(RejectedError):
    """A chunk shorter than the length the release implies for its index."""

    reason = "chunk_size"


class SizeExceededError(RejectedError):
    """More bytes than the release's `size` (endless-data defence)."""

    reason = "size_exceeded"


class ArtifactHashError(RejectedError):
    """A complete artifact whose sha256 or size differs from the release."""

    reason = "artifact_hash"


class SelfTestMismatchError(RejectedError):
    """Model outputs that do not reproduce the release's golden self-test."""

    reason = "selftest_mismatch"


class ExternalDataError(RejectedError):
    """A model that refers to data outside its own bytes (ONNX external data), never loaded."""

    reason = "external_data"


REJECTION_REASONS: tuple[str, ...] = tuple(
    cls.reason
    for cls in (
        OversizedDocumentError,
        MalformedDocumentError,
        SignatureThresholdError,
        WrongTypeError,
        ExpiredError,
        RootVersionError,
        WrongDeviceError,
        ReplayedAssignmentError,
        ReleaseMismatchError,
        ChunkIndexError,
        ChunkHashError,
        ChunkSizeError,
        SizeExceededError,
        ArtifactHashError,
        SelfTestMismatchError,
        ExternalDataError,
    )
)
