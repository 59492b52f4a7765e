"""End to end, as an operator: init, serve, build, push, provision, deploy; then a plain paho
subscriber (not our agent) checks with edge_protocol alone that what reached the broker is a
complete, verifiable update: root, release, every chunk and the device's assignment."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import paho.mqtt.client as mqtt
import pytest
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from edge_protocol import (
    ArtifactVerifier,
    Release,
    TensorData,
    Topics,
    TrustedState,
    check_selftest_outputs,
)
from tests.support.broker import LOCALHOST, BrokerFactory, MqttTestClient, free_port
from tests.support.registry import RegistryProcess, cli, cli_json, home_with_broker

TOPICS = Topics()
DEVICE = "dev-1"


@dataclass
class Workspace:
    """The operator's files: the home, a trained model as ONNX and its evaluation set."""

    root: Path
    home: Path
    onnx: Path
    eval_set: Path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Train the 32 -> 256 -> 256 MLP and convert it with `model-registry build-sklearn`."""
    root = tmp_path_factory.mktemp("operator")
    features, labels = make_classification(
        n_samples=1200, n_features=32, n_informative=16, n_classes=3, random_state=3
    )
    features = features.astype(np.float32)
    model = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=40, random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features[:900], labels[:900])
    joblib.dump(model, root / "mlp.joblib")
    np.savez(root / "eval.npz", X=features[900:], y=labels[900:])
    cli("build-sklearn", str(root / "mlp.joblib"), "--sample", str(root / "eval.npz"),
        "-o", str(root / "mlp.onnx"))  # fmt: skip
    return Workspace(root, root / "home", root / "mlp.onnx", root / "eval.npz")


def _operator_story(ws: Workspace, home: Path, registry: RegistryProcess) -> dict[str, object]:
    """push with int8 + accuracy gate, provision a device; return the pushed release."""
    api = ("--home", str(home))
    release = cli_json("push", str(ws.onnx), "--name", "mlp", "--quantize", "int8",
                       "--eval", str(ws.eval_set), "--label", "first", *api)  # fmt: skip
    cli("devices", "add", DEVICE, "--group", "lab", "--out", str(home.parent / "bundle"), *api)
    assert registry.process is not None
    assert registry.process.poll() is None
    return release


def _subscribe_all(client: MqttTestClient, sha256: str) -> None:
    for topic in (
        TOPICS.all_roots(),
        TOPICS.model_releases("mlp"),
        f"{TOPICS.prefix}/artifacts/{sha256}/+",
        TOPICS.assignment(DEVICE),
    ):
        client.subscribe(topic)


def _collect(client: MqttTestClient, chunk_count: int) -> dict[str, bytes]:
    """Gather messages until root, release, assignment and every chunk have arrived."""
    received: dict[str, bytes] = {}
    chunk_prefix = f"{TOPICS.prefix}/artifacts/"
    while not (
        TOPICS.root(1) in received
        and TOPICS.release("mlp", 1) in received
        and TOPICS.assignment(DEVICE) in received
        and sum(t.startswith(chunk_prefix) for t in received) == chunk_count
    ):
        message = client.next_message(timeout=60)
        if message.payload:  # an empty message clears a retained topic; it is never content
            received[message.topic] = bytes(message.payload)
    return received


def _verify_as_a_device(bundle: Path, received: dict[str, bytes]) -> bytes:
    """Apply every trust rule with edge_protocol alone; return the reassembled artifact."""
    state = TrustedState((bundle / "root.json").read_bytes(), device_id=DEVICE)
    assert received[TOPICS.root(1)] == (bundle / "root.json").read_bytes()
    assignment = state.verify_assignment(received[TOPICS.assignment(DEVICE)])
    release = state.verify_release(
        received[TOPICS.release("mlp", 1)], "mlp", assignment.models["mlp"]
    )
    verifier = ArtifactVerifier(release.artifact)
    chunks = []
    for index in range(len(release.artifact.chunks)):
        chunk = received[TOPICS.artifact_chunk(release.artifact.sha256, index)]
        verifier.verify_chunk(index, chunk)
        chunks.append(chunk)
    artifact = b"".join(chunks)
    verifier.verify_complete(hashlib.sha256(artifact).hexdigest(), len(artifact))
    _check_selftest(release, artifact)
    return artifact


def _check_selftest(release: Release, artifact: bytes) -> None:
    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    feeds = {
        t.name: np.frombuffer(t.data, dtype=np.float32).reshape(t.shape)
        for t in release.selftest.inputs
    }
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, feeds), strict=True))
    actual = {
        e.name: TensorData(
            e.name, e.datatype, tuple(outputs[e.name].shape), outputs[e.name].tobytes()
        )
        for e in release.selftest.outputs
    }
    check_selftest_outputs(release.selftest, actual)


def _device_client(host: str, port: int, bundle: Path) -> MqttTestClient:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=DEVICE, protocol=mqtt.MQTTv311)
    client.username_pw_set(DEVICE, (bundle / "mqtt-password").read_text())
    return MqttTestClient.connect(client, host, port, timeout=20)


def _run_story(
    ws: Workspace,
    home: Path,
    broker_args: tuple[str, ...],
    reconfigure: Callable[[], tuple[str, int]],
) -> None:
    registry = RegistryProcess(home, broker_args)
    registry.start()
    try:
        release = _operator_story(ws, home, registry)
        host, port = reconfigure()
        bundle = home.parent / "bundle"
        with _device_client(host, port, bundle) as client:
            _subscribe_all(client, str(release["sha256"]))
            cli("deploy", "mlp", "1", "--group", "lab", "--home", str(home))
            received = _collect(client, len(release["artifact"]["chunks"]))  # type: ignore[index]
        artifact = _verify_as_a_device(bundle, received)
        fp32_size = ws.onnx.stat().st_size
        assert len(artifact) * 3 <= fp32_size, f"int8 {len(artifact)} vs fp32 {fp32_size} bytes"
        build = release["build"]
        assert {"accuracy_fp32", "accuracy_int8"} <= set(build)  # type: ignore[arg-type]
    finally:
        registry.stop()


def test_update_reaches_a_device_through_mosquitto(
    workspace: Workspace, broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    home, broker = home_with_broker(tmp_path, broker_factory)
    port = broker.port

    def reconfigure() -> tuple[str, int]:
        # The device was provisioned after the broker started; `devices add` gave the running
        # broker its login, so nothing is regenerated or restarted.
        assert broker.process.running
        return LOCALHOST, port

    _run_story(workspace, home, ("--mqtt-url", f"mqtt://{LOCALHOST}:{port}"), reconfigure)


def test_update_reaches_a_device_through_the_embedded_broker(
    workspace: Workspace, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    cli("init", "--home", str(home))
    port = free_port()
    _run_story(
        workspace,
        home,
        ("--embedded-broker", f"{LOCALHOST}:{port}"),
        lambda: (LOCALHOST, port),
    )
