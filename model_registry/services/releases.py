"""Pushing a model: build, store the artifact, sign release `last + 1`, announce it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from numpy.typing import NDArray

from edge_protocol import Artifact
from edge_protocol.fields import is_valid_name
from model_registry.build import BuildResult, EvalSet, build
from model_registry.build.champion import GatePolicy
from model_registry.errors import ConflictError, InvalidInputError, NotFoundError
from model_registry.services.champion import champion_verdict, check_policy
from model_registry.services.context import RegistryContext
from model_registry.storage import ReleaseRecord

log = logging.getLogger(__name__)
VERSION_RACE_RETRIES = 3  # replicas pushing the same model at once each get their own version


@dataclass(frozen=True)
class PushRequest:
    """What an operator asks for when pushing a model."""

    name: str
    model: bytes
    quantize: str | None = None  # "int8" or None
    eval_set: EvalSet | None = None
    label: str = ""
    accuracy_limit_points: float = 1.0
    source: str = "onnx"
    calibration: NDArray[Any] | None = None  # rows for static QDQ quantization
    allow_duplicate: bool = False  # build a new version even of bytes an earlier one has
    gate: GatePolicy = field(default_factory=GatePolicy)  # the champion gate (build/champion.py)
    reference: NDArray[Any] | None = None  # rows X the drift profile is made of (else eval_set)


async def push_model(ctx: RegistryContext, request: PushRequest) -> ReleaseRecord:
    """Build and sign the next version of a model; nothing is stored if any step fails."""
    if not is_valid_name(request.name):
        raise InvalidInputError(
            f"model name {request.name!r} must be letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 128)"
        )
    if request.quantize not in (None, "int8"):
        raise InvalidInputError(f"quantize must be 'int8', not {request.quantize!r}")
    if len(request.label) > 256:
        raise InvalidInputError("label must be at most 256 characters")
    check_policy(request.gate, request.eval_set)
    source_sha256 = await asyncio.to_thread(_sha256, request.model)  # the loop never hashes
    if not request.allow_duplicate:
        await _refuse_duplicate(ctx, request.name, source_sha256)
    result = await asyncio.to_thread(
        build,
        request.model,
        quantize=request.quantize,
        eval_set=request.eval_set,
        calibration=request.calibration,
        accuracy_limit_points=request.accuracy_limit_points,
        source=request.source,
        reference_rows=request.reference,
    )
    verdict = await champion_verdict(ctx, request.name, request.gate, result, request.eval_set)
    # The uploaded bytes' digest: the artifact's differs once the build rewrote the model.
    result = replace(result, report={**result.report, **verdict, "source_sha256": source_sha256})
    # Hashing and chunking a large model takes a while: both stay off the event loop, once.
    chunk_size = ctx.config.artifacts.chunk_size_kib * 1024
    artifact = await asyncio.to_thread(Artifact.describe, result.artifact, chunk_size)
    await asyncio.to_thread(ctx.blobs.put, result.artifact, artifact.sha256)
    record = await _store_next_version(ctx, request, result, artifact)
    log.info("pushed %s v%d (%d bytes)", record.model, record.version, record.size)
    if ctx.publisher is not None:
        await ctx.publisher.publish_release(record)
    return record


async def _refuse_duplicate(ctx: RegistryContext, name: str, source_sha256: str) -> None:
    """ConflictError naming the version built from these same bytes, if there is one."""
    try:
        releases = await ctx.storage.releases(name)
    except NotFoundError:
        return  # a new model
    for release in releases:
        # Releases from before `source_sha256` was recorded match on an unchanged artifact.
        if source_sha256 in (release.build.get("source_sha256"), release.sha256):
            quantization = release.build.get("quantization", "none")
            raise ConflictError(
                f"{name} version {release.version} was built from this same file "
                f"(sha256 {source_sha256[:12]}..., quantization {quantization}); send "
                "allow_duplicate=true (model-registry push --allow-duplicate) to make a new "
                "version of it anyway"
            )


async def _store_next_version(
    ctx: RegistryContext, request: PushRequest, result: BuildResult, artifact: Artifact
) -> ReleaseRecord:
    for _attempt in range(VERSION_RACE_RETRIES):
        version = await ctx.storage.latest_version(request.name) + 1
        release, envelope = ctx.signer.release(
            model=request.name,
            version=version,
            label=request.label,
            artifact=artifact,
            io=result.io,
            selftest=result.selftest,
            build=result.report,
            now=ctx.clock(),
            profile=result.profile,
        )
        record = ReleaseRecord(
            model=release.model,
            version=release.version,
            label=release.label,
            sha256=artifact.sha256,
            size=artifact.size,
            created=release.created,
            expires=release.expires,
            envelope=envelope,
            build=release.build,
        )
        try:
            await ctx.storage.add_release(record)
        except ConflictError:
            continue
        return record
    raise ConflictError(
        f"could not allocate a version of {request.name}: too many concurrent pushes"
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
