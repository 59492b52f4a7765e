"""The signed envelope `{"signed": {...}, "signatures": [{"keyid", "sig"}]}`.

Signatures cover the canonical JSON of `signed`, so a document can be re-serialized, stored
and forwarded freely. `signed` is kept as the decoded object it arrived as, which is what lets
fields this version does not know survive a load/dump round trip and still verify.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from edge_protocol.canonical import canonical_bytes, parse_json
from edge_protocol.errors import (
    CanonicalJSONError,
    MalformedDocumentError,
    OversizedDocumentError,
    SignatureThresholdError,
)
from edge_protocol.keys import PublicKey, SigningKey

# A release carries its self-test tensors, so it is the largest document; 1 MiB leaves room
# for that while refusing a flood before a single byte of it is parsed.
MAX_DOCUMENT_BYTES = 1024 * 1024
_KEYID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Signature:
    """One signature: the signer's key id and the base64 Ed25519 signature."""

    keyid: str
    sig: str

    def to_dict(self) -> dict[str, str]:
        """Return the wire object of this signature."""
        return {"keyid": self.keyid, "sig": self.sig}


@dataclass(frozen=True)
class Envelope:
    """A signed document as it travels: the signed object plus its signatures."""

    signed: dict[str, Any]
    signatures: tuple[Signature, ...] = ()
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int = MAX_DOCUMENT_BYTES) -> Envelope:
        """Parse wire bytes, refusing oversized or malformed input before anything else."""
        if len(data) > max_bytes:
            raise OversizedDocumentError(f"document is {len(data)} bytes; the cap is {max_bytes}")
        try:
            obj = parse_json(data)
        except CanonicalJSONError as e:
            raise MalformedDocumentError(str(e)) from e
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: Any) -> Envelope:
        """Build an envelope from a decoded JSON object."""
        if not isinstance(obj, dict):
            raise MalformedDocumentError("envelope must be a JSON object")
        signed, raw_signatures = obj.get("signed"), obj.get("signatures")
        if not isinstance(signed, dict):
            raise MalformedDocumentError("envelope field 'signed' must be an object")
        if not isinstance(raw_signatures, list):
            raise MalformedDocumentError("envelope field 'signatures' must be a list")
        signatures = tuple(_parse_signature(item) for item in raw_signatures)
        extra = {k: v for k, v in obj.items() if k not in ("signed", "signatures")}
        return cls(signed=signed, signatures=signatures, unrecognized_fields=extra)

    def to_dict(self) -> dict[str, Any]:
        """Return the envelope as a JSON-ready object."""
        return {
            **self.unrecognized_fields,
            "signed": self.signed,
            "signatures": [s.to_dict() for s in self.signatures],
        }

    def to_bytes(self) -> bytes:
        """Return the canonical wire bytes of the whole envelope."""
        return canonical_bytes(self.to_dict())

    def signed_bytes(self) -> bytes:
        """Return the bytes the signatures cover."""
        return canonical_bytes(self.signed)

    def sign(self, key: SigningKey) -> Envelope:
        """Return a copy signed by `key`, replacing an earlier signature by the same key."""
        sig = base64.b64encode(key.sign(self.signed_bytes())).decode("ascii")
        others = tuple(s for s in self.signatures if s.keyid != key.keyid)
        return replace(self, signatures=(*others, Signature(keyid=key.keyid, sig=sig)))

    def count_valid_signatures(self, keyids: Collection[str], keys: Mapping[str, PublicKey]) -> int:
        """Count distinct keys among `keyids` whose signature over `signed` verifies."""
        message = self.signed_bytes()
        valid: set[str] = set()
        for signature in self.signatures:
            key = keys.get(signature.keyid)
            if signature.keyid not in keyids or key is None or signature.keyid in valid:
                continue
            raw = _decode_signature(signature.sig)
            if raw is not None and key.verify(raw, message):
                valid.add(signature.keyid)
        return len(valid)

    def verify(
        self, role_name: str, keyids: Collection[str], threshold: int, keys: Mapping[str, PublicKey]
    ) -> None:
        """Raise SignatureThresholdError unless `threshold` keys of the role signed."""
        count = self.count_valid_signatures(keyids, keys)
        if count < threshold:
            raise SignatureThresholdError(
                f"{count} valid signature(s) by {role_name} keys; {threshold} required"
            )


def _parse_signature(item: Any) -> Signature:
    if not isinstance(item, dict) or set(item) != {"keyid", "sig"}:
        raise MalformedDocumentError("each signature must be an object with 'keyid' and 'sig'")
    keyid, sig = item["keyid"], item["sig"]
    if not isinstance(keyid, str) or not _KEYID.fullmatch(keyid):
        raise MalformedDocumentError("signature keyid must be 64 lowercase hex characters")
    if not isinstance(sig, str):
        raise MalformedDocumentError("signature 'sig' must be a base64 string")
    return Signature(keyid=keyid, sig=sig)


def _decode_signature(sig: str) -> bytes | None:
    try:
        return base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        return None
