"""Signed envelopes: thresholds, tampering, unknown fields, malformed input."""

from __future__ import annotations

import base64

import pytest

from edge_protocol import Envelope, SigningKey, canonical_bytes
from edge_protocol.errors import (
    MalformedDocumentError,
    OversizedDocumentError,
    SignatureThresholdError,
)
from tests.protocol.factory import sign

KEYS = [SigningKey.generate() for _ in range(3)]
PUBLIC = {k.keyid: k.public_key for k in KEYS}
IDS = [k.keyid for k in KEYS]


def _envelope(*signers: SigningKey, signed: dict[str, object] | None = None) -> Envelope:
    return Envelope.from_bytes(sign(signed or {"_type": "x", "n": 1}, *signers))


def test_threshold_counts_distinct_valid_signatures_of_role_keys() -> None:
    envelope = _envelope(KEYS[0], KEYS[1])
    assert envelope.count_valid_signatures(IDS, PUBLIC) == 2
    envelope.verify("release", IDS, 2, PUBLIC)
    with pytest.raises(SignatureThresholdError, match="2 valid signature"):
        envelope.verify("release", IDS, 3, PUBLIC)


def test_signatures_by_keys_outside_the_role_do_not_count() -> None:
    envelope = _envelope(KEYS[0], KEYS[2])
    assert envelope.count_valid_signatures(IDS[:2], PUBLIC) == 1


def test_the_same_key_signing_twice_counts_once() -> None:
    envelope = _envelope(KEYS[0])
    doubled = Envelope(envelope.signed, envelope.signatures * 2)
    assert doubled.count_valid_signatures(IDS, PUBLIC) == 1


def test_tampered_content_or_signature_does_not_verify() -> None:
    envelope = _envelope(KEYS[0])
    tampered = Envelope({**envelope.signed, "n": 2}, envelope.signatures)
    assert tampered.count_valid_signatures(IDS, PUBLIC) == 0
    bad_sig = Envelope(envelope.signed, (type(envelope.signatures[0])(IDS[0], "!!notbase64"),))
    assert bad_sig.count_valid_signatures(IDS, PUBLIC) == 0
    zero_sig = base64.b64encode(bytes(64)).decode()
    forged = Envelope(envelope.signed, (type(envelope.signatures[0])(IDS[0], zero_sig),))
    assert forged.count_valid_signatures(IDS, PUBLIC) == 0


def test_unknown_fields_survive_a_round_trip_and_still_verify() -> None:
    signed = {"_type": "x", "n": 1, "future_field": {"nested": [1, "two"]}}
    envelope = Envelope.from_dict(
        {"signed": signed, "signatures": [], "transport_hint": "kept"}
    ).sign(KEYS[0])
    reloaded = Envelope.from_bytes(envelope.to_bytes())
    assert reloaded.signed == signed
    assert reloaded.unrecognized_fields == {"transport_hint": "kept"}
    assert reloaded.to_bytes() == envelope.to_bytes()
    reloaded.verify("release", IDS, 1, PUBLIC)


def test_resigning_replaces_the_old_signature_of_the_same_key() -> None:
    envelope = _envelope(KEYS[0]).sign(KEYS[0])
    assert len(envelope.signatures) == 1


def test_oversized_document_is_refused_before_parsing() -> None:
    with pytest.raises(OversizedDocumentError):
        Envelope.from_bytes(b"{" * 100, max_bytes=99)


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"signed": [], "signatures": []},
        {"signed": {}, "signatures": {}},
        {"signatures": []},
        {"signed": {}, "signatures": [{"keyid": "x", "sig": "AA=="}]},
        {"signed": {}, "signatures": [{"keyid": "0" * 64}]},
        {"signed": {}, "signatures": [{"keyid": "0" * 64, "sig": 5}]},
        {"signed": {}, "signatures": ["sig"]},
    ],
)
def test_malformed_envelopes_are_refused(obj: object) -> None:
    with pytest.raises(MalformedDocumentError):
        Envelope.from_bytes(canonical_bytes(obj))


def test_non_json_and_float_content_are_malformed() -> None:
    with pytest.raises(MalformedDocumentError):
        Envelope.from_bytes(b"not json")
    with pytest.raises(MalformedDocumentError, match="float"):
        Envelope.from_bytes(b'{"signed":{"x":0.5},"signatures":[]}')
