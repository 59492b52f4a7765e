"""Shared wire format and trust core of the edge model runtime.

Pure: bytes in, objects out. Imports only the standard library and `cryptography`.
docs/protocol.md is the normative description of everything defined here.
"""

from edge_protocol.assignment import AssignedModel, Assignment, ExperimentSpec, Pin
from edge_protocol.canonical import canonical_bytes, parse_json
from edge_protocol.envelope import MAX_DOCUMENT_BYTES, Envelope, Signature
from edge_protocol.errors import (
    REJECTION_REASONS,
    FormatError,
    ProtocolError,
    RejectedError,
)
from edge_protocol.fields import format_time, parse_time
from edge_protocol.keys import PublicKey, SigningKey
from edge_protocol.metadata import (
    SPEC_VERSION,
    Artifact,
    ModelIO,
    Release,
    RoleKeys,
    Root,
    SelfTest,
    TensorData,
    TensorSpec,
)
from edge_protocol.onnx_scan import check_self_contained, find_external_reference
from edge_protocol.profile import Bins, InputProfile, OutputProfile, Profile
from edge_protocol.selftest import check_selftest_outputs
from edge_protocol.topics import DEFAULT_PREFIX, TopicRef, Topics
from edge_protocol.trust import ArtifactVerifier, TrustedState, utc_now

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PREFIX",
    "MAX_DOCUMENT_BYTES",
    "REJECTION_REASONS",
    "SPEC_VERSION",
    "Artifact",
    "ArtifactVerifier",
    "AssignedModel",
    "Assignment",
    "Bins",
    "Envelope",
    "ExperimentSpec",
    "FormatError",
    "InputProfile",
    "ModelIO",
    "OutputProfile",
    "Pin",
    "Profile",
    "ProtocolError",
    "PublicKey",
    "RejectedError",
    "Release",
    "RoleKeys",
    "Root",
    "SelfTest",
    "Signature",
    "SigningKey",
    "TensorData",
    "TensorSpec",
    "TopicRef",
    "Topics",
    "TrustedState",
    "canonical_bytes",
    "check_self_contained",
    "check_selftest_outputs",
    "find_external_reference",
    "format_time",
    "parse_json",
    "parse_time",
    "utc_now",
]
