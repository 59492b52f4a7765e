"""The registry's side of an update, for the simulator: signed releases, assignments, chunks.

Documents are signed with the protocol's own keys and formats (`tests.protocol.factory`), the
release's golden self-test is what onnxruntime answers on the model, and everything is published
retained on the topics of docs/protocol.md section 7, and every event and telemetry message
the device sends is acknowledged on its `acks` topic, as the registry does. Each builder takes
the changes a test needs to make a document wrong in one way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from edge_protocol import (
    Artifact,
    AssignedModel,
    Assignment,
    ModelIO,
    Release,
    SelfTest,
    TensorData,
    TensorSpec,
    Topics,
)
from edge_protocol.messages import ack_payload
from tests.protocol.factory import DEVICE, NOW, Registry
from tests.support.probation_models import CLASSES, FEATURES
from tests.support.sim_broker import Published as Sent
from tests.support.sim_broker import SimBroker

CHUNK = 4096
# Every probation model's interface (tests/support/probation_models.py).
IO = ModelIO(
    inputs=(TensorSpec("X", "FP32", (-1, FEATURES)),),
    outputs=(TensorSpec("label", "INT64", (-1,)), TensorSpec("scores", "FP32", (-1, CLASSES))),
)
# Rows that sum below 0: the "erratic" probation model passes its self-test on them and fails
# the requests `Sim.infer` sends (rows of positive values).
GOLDEN_ROWS = -np.linspace(0.1, 1, 2 * FEATURES, dtype=np.float32).reshape(2, FEATURES)


@dataclass(frozen=True)
class Shipped:
    """One release the repository published: its document, signed bytes and model bytes."""

    release: Release
    signed: bytes
    data: bytes

    @property
    def version(self) -> int:
        """The release's version."""
        return self.release.version


def golden_selftest(path: Path, rows: np.ndarray[Any, Any] = GOLDEN_ROWS) -> SelfTest:
    """What the model answers on `rows`: the labels (never NaN, whatever the model)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (labels,) = session.run(["label"], {"X": rows})
    labels = np.ascontiguousarray(labels, dtype="<i8")
    return SelfTest(
        inputs=(TensorData("X", "FP32", rows.shape, rows.astype("<f4").tobytes()),),
        outputs=(TensorData("label", "INT64", labels.shape, labels.tobytes()),),
    )


def stamped(path: Path, doc: str) -> bytes:
    """The model at `path` with `doc` as its doc string: other bytes, the same answers."""
    model = onnx.load(str(path))
    model.doc_string = doc
    return bytes(model.SerializeToString())


class SimRepository:
    """Publishes what the registry would, to a `SimBroker`, signed by a test `Registry`."""

    def __init__(self, broker: SimBroker, registry: Registry | None = None) -> None:
        self.broker = broker
        self.keys = registry or Registry()
        self.topics = Topics()
        self.seq = 0
        broker.listeners.append(self._acknowledge)

    def _acknowledge(self, message: Sent) -> None:
        """Say the device's event or telemetry message is stored, as the registry does."""
        kinds = (self.topics.events(DEVICE), self.topics.telemetry(DEVICE))
        body = message.json() if message.topic in kinds else {}
        if body.get("msg_seq") is not None:
            ranges = [(body["msg_seq"], body["msg_seq"])]
            payload = ack_payload(DEVICE, body["msg_epoch"], ranges)
            self.broker.publish(self.topics.acks(DEVICE), payload, retain=False)

    def root_bytes(self) -> bytes:
        """The root a device is provisioned with."""
        return self.keys.root_bytes()

    def release(
        self,
        model: str,
        version: int,
        path: Path,
        *,
        data: bytes | None = None,
        chunk_size: int = CHUNK,
        golden_rows: np.ndarray[Any, Any] = GOLDEN_ROWS,
        **changes: Any,
    ) -> Shipped:
        """Sign and publish a release of the model file at `path` (its chunks too).

        Each release's bytes are its own (the model's doc string names it), so two versions
        never share a file in the store. `data` replaces the bytes (the self-test still comes
        from the file); `changes` alter the signed document (`artifact`, `selftest`,
        `expires`, ...). The chunks go out under the sha256 the release's artifact names.
        """
        content = stamped(path, f"{model} v{version}") if data is None else data
        release = self.keys.release(
            version, artifact=Artifact.describe(content, chunk_size), io=IO,
            selftest=golden_selftest(path, golden_rows),
        )  # fmt: skip
        release = replace(release, model=model, **changes)
        published = Shipped(release, self.keys.release_bytes(release), content)
        self.broker.publish(self.topics.release(model, version), published.signed)
        self.publish_chunks(published)
        return published

    def publish_chunks(self, published: Shipped, indices: range | list[int] | None = None) -> None:
        """Publish the chunks of a release (all unless `indices` says which)."""
        artifact = published.release.artifact
        for index in indices if indices is not None else range(len(artifact.chunks)):
            chunk = published.data[index * artifact.chunk_size : (index + 1) * artifact.chunk_size]
            self.broker.publish(self.topics.artifact_chunk(artifact.sha256, index), chunk)

    def withdraw_chunks(self, published: Shipped) -> None:
        """Clear every chunk topic of a release (a download can then make no progress)."""
        artifact = published.release.artifact
        for index in range(len(artifact.chunks)):
            self.broker.publish(self.topics.artifact_chunk(artifact.sha256, index), b"")

    def assignment(self, *releases: Shipped, seq: int | None = None, **changes: Any) -> bytes:
        """Sign an assignment of `releases` (the next seq unless given) to DEVICE."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        models = {
            p.release.model: AssignedModel(
                p.release.version, p.release.artifact.sha256, p.release.artifact.size
            )
            for p in releases
        }
        document = Assignment(
            device_id=DEVICE, seq=seq, created=NOW, expires=NOW + timedelta(days=7), models=models
        )
        return self.keys.assignment_bytes(replace(document, **changes))

    def assign(self, *releases: Shipped, **changes: Any) -> bytes:
        """Sign and publish (retained) an assignment of `releases`; return its bytes."""
        signed = self.assignment(*releases, **changes)
        self.broker.publish(self.topics.assignment(DEVICE), signed)
        return signed

    def send_assignment(self, signed: bytes) -> None:
        """Publish assignment bytes as they are (forged, replayed, ...)."""
        self.broker.publish(self.topics.assignment(DEVICE), signed)
