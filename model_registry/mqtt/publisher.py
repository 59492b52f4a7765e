"""What the registry puts on the broker: roots, releases, chunks, assignments (all retained).

Retained messages make the broker the distribution point: the registry publishes a document or
a chunk once and every device, now or later, gets it from the broker. Chunks of an artifact are
published when a deployment first needs them and cleared when no device is assigned them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol

from edge_protocol import Artifact, Envelope, Release, Topics
from model_registry.storage import BlobStore, ReleaseRecord

log = logging.getLogger(__name__)


class Transport(Protocol):
    """The one thing the publisher needs from a connection."""

    async def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        """Publish at QoS 1 and wait for the acknowledgement."""


class Publisher:
    """Publishes the registry's retained state as docs/protocol.md section 7 lays it out."""

    def __init__(self, transport: Transport, topics: Topics, blobs: BlobStore) -> None:
        self._transport = transport
        self._topics = topics
        self._blobs = blobs
        self._published_artifacts: set[str] = set()

    async def publish_root(self, version: int, envelope: bytes) -> None:
        """Publish one signed root."""
        await self._transport.publish(self._topics.root(version), envelope)

    async def publish_release(self, release: ReleaseRecord) -> None:
        """Publish a signed release document (its chunks go out with `publish_artifact`)."""
        await self._transport.publish(
            self._topics.release(release.model, release.version), release.envelope
        )

    async def publish_artifact(self, release: ReleaseRecord, *, force: bool = False) -> int:
        """Publish every chunk of a release's artifact once; return how many were sent."""
        artifact = artifact_of(release)
        if artifact.sha256 in self._published_artifacts and not force:
            return 0
        data = await asyncio.to_thread(self._blobs.read, artifact.sha256)
        await asyncio.gather(
            *(
                self._transport.publish(
                    self._topics.artifact_chunk(artifact.sha256, index),
                    data[index * artifact.chunk_size : (index + 1) * artifact.chunk_size],
                )
                for index in range(len(artifact.chunks))
            )
        )
        self._published_artifacts.add(artifact.sha256)
        log.info("published %d chunks of %s", len(artifact.chunks), artifact.sha256[:12])
        return len(artifact.chunks)

    async def clear_artifact(self, release: ReleaseRecord) -> None:
        """Remove an artifact's retained chunks (an empty retained message clears a topic)."""
        artifact = artifact_of(release)
        await asyncio.gather(
            *(
                self._transport.publish(self._topics.artifact_chunk(artifact.sha256, index), b"")
                for index in range(len(artifact.chunks))
            )
        )
        self._published_artifacts.discard(artifact.sha256)

    async def publish_assignment(self, device_id: str, envelope: bytes) -> None:
        """Publish a device's signed assignment."""
        await self._transport.publish(self._topics.assignment(device_id), envelope)

    async def publish_assignments(self, envelopes: Mapping[str, bytes]) -> None:
        """Publish many devices' signed assignments (device id -> envelope) at once.

        Pipelined: every publish is handed to the connection before any acknowledgement is
        awaited, so a deployment to thousands of devices costs a few round trips, not one each.
        """
        await asyncio.gather(
            *(
                self._transport.publish(self._topics.assignment(device_id), envelope)
                for device_id, envelope in envelopes.items()
            )
        )

    async def clear_assignment(self, device_id: str) -> None:
        """Remove a device's retained assignment (a removed device gets nothing more)."""
        await self._transport.publish(self._topics.assignment(device_id), b"")

    def is_published(self, sha256: str) -> bool:
        """Return whether this process has published the artifact's chunks."""
        return sha256 in self._published_artifacts


def artifact_of(release: ReleaseRecord) -> Artifact:
    """Return the artifact descriptor inside a stored release's signed document."""
    return Release.from_dict(Envelope.from_bytes(release.envelope).signed).artifact
