"""Operator-set imports of ONNX graphs: normalising them and summarising them for reports.

skl2onnx (1.20 at least) lists the default domain twice when the caller pins
`target_opset={"": 17, "ai.onnx.ml": 3}` and the graph holds only ML-domain nodes (trees,
LinearClassifier, Scaler...): `_update_domain_version` adds `""` from the target opsets and
`convert_topology` adds it again because no default-domain node was seen. onnxruntime accepts
that, but `onnxruntime.quantization`'s `get_opset_version` wants exactly one `""`/`"ai.onnx"`
entry and fails with "Failed to find proper ai.onnx domain". One entry per domain (the highest
version, `"ai.onnx"` spelled `""`) is what the ONNX spec means, so that is what we write.
"""

from __future__ import annotations

import onnx

DEFAULT_DOMAIN = ""
_DEFAULT_DOMAIN_ALIASES = frozenset({"", "ai.onnx"})


def opset_versions(model: onnx.ModelProto) -> dict[str, int]:
    """Return one version per operator domain (the highest listed), `ai.onnx` spelled ``""``."""
    versions: dict[str, int] = {}
    for entry in model.opset_import:
        domain = DEFAULT_DOMAIN if entry.domain in _DEFAULT_DOMAIN_ALIASES else entry.domain
        versions[domain] = max(versions.get(domain, 0), int(entry.version))
    return versions


def normalise_opset_imports(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of `model` listing each operator domain once, at its highest version."""
    versions = opset_versions(model)
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.opset_import[:]
    fixed.opset_import.extend(
        onnx.helper.make_opsetid(domain, version) for domain, version in sorted(versions.items())
    )
    return fixed


def opset_summary(model_bytes: bytes) -> dict[str, int]:
    """Return the opset versions of serialized model bytes, for the build report."""
    return opset_versions(onnx.load_from_string(model_bytes))
