"""Shared end-to-end fixtures: models, a running fleet, pushed releases, agents."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from onnx import TensorProto, helper

from edge_protocol import Envelope
from model_registry.services.devices import BUNDLE_PASSWORD
from tests.e2e.production_broker import (
    DEVICE,
    OTHER,
    REGISTRY,
    Production,
    provision,
)
from tests.support.agent import AgentProcess
from tests.support.broker import LOCALHOST, BrokerFactory, MqttTestClient, free_port
from tests.support.fleet import TOPICS, Fleet
from tests.support.models import build_classifier
from tests.support.registry import cli

CHUNK = 4 * 1024  # small chunks: every artifact spans many messages


@dataclass
class Models:
    """Three versions of one classifier, and a model that passes its self-test but fails requests.

    v3 is pushed but never deployed by the registry: tests publish its chunks themselves.
    """

    v1: Path
    v2: Path
    v3: Path
    broken: Path
    rows: list[list[float]]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """The model files, built once per module."""
    root = tmp_path_factory.mktemp("models")
    first = build_classifier(root / "v1.onnx", n_samples=600)
    build_classifier(root / "v2.onnx", n_samples=450)
    build_classifier(root / "v3.onnx", n_samples=520)
    broken = failing_model(root / "broken.onnx")
    rows = first.X_eval[:4].tolist()
    return Models(root / "v1.onnx", root / "v2.onnx", root / "v3.onnx", broken, rows)


def failing_model(path: Path) -> Path:
    """Fine on ordinary inputs (warm-up, self-test), a runtime failure when X[0][0] > 1000.

    It reshapes X to [-1, d] with d = 1, or 64 when the first feature is huge: 32 elements per
    row cannot be reshaped to rows of 64, so onnxruntime fails inside the graph (a 500).
    """
    make = helper.make_node
    const = helper.make_tensor
    nodes = [
        make("Gather", ["X", "zero"], ["first"], axis=1),
        make("ReduceMax", ["first"], ["largest"], keepdims=0),
        make("Greater", ["largest", "limit"], ["huge"]),
        make("Cast", ["huge"], ["huge_int"], to=TensorProto.INT64),
        make("Mul", ["huge_int", "sixty_three"], ["extra"]),
        make("Add", ["extra", "one"], ["width"]),
        make("Unsqueeze", ["width", "axes"], ["width_1d"]),
        make("Concat", ["minus_one", "width_1d"], ["shape"], axis=0),
        make("Reshape", ["X", "shape"], ["probabilities"]),
    ]
    constants = [
        const("zero", TensorProto.INT64, [], [0]),
        const("limit", TensorProto.FLOAT, [], [1000.0]),
        const("sixty_three", TensorProto.INT64, [], [63]),
        const("one", TensorProto.INT64, [], [1]),
        const("axes", TensorProto.INT64, [1], [0]),
        const("minus_one", TensorProto.INT64, [1], [-1]),
    ]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 32])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["M", "D"])
    graph = helper.make_graph(nodes, "broken", [x], [y], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    factory = BrokerFactory(root / "brokers")
    fleet = Fleet(root, factory)
    fleet.start(chunk_size_kib=CHUNK // 1024)
    yield fleet
    fleet.stop()
    factory.close()


@pytest.fixture(scope="module")
def releases(fleet: Fleet, models: Models) -> dict[str, int]:
    """Versions 1 and 2 of `clf` and version 1 of `broken`, pushed once for the module."""
    return {
        "v1": fleet.push(models.v1, "clf")["version"],
        "v2": fleet.push(models.v2, "clf")["version"],
        "v3": fleet.push(models.v3, "clf")["version"],
        "broken": fleet.push(models.broken, "broken")["version"],
    }


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


def start_agent(
    fleet: Fleet, agents: list[AgentProcess], device: str, group: str, extra_toml: str = ""
) -> AgentProcess:
    """Provision a device, start its agent, and stop it when the test ends."""
    agent = fleet.agent(device, group, extra_toml)
    agents.append(agent)
    agent.start()
    return agent


def collect_events(
    client: MqttTestClient, device: str, until: str, timeout: float = 60
) -> list[dict[str, Any]]:
    """Collect the device's events until one of kind `until` arrives."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = client.next_message(timeout=deadline - time.monotonic())
        if message.topic == TOPICS.events(device):
            event = json.loads(message.payload)
            seen.append(event)
            if event["event"] == until:
                return seen
    raise AssertionError(f"no {until} event from {device}; saw {seen}")


def genuine_release(fleet: Fleet, version: int) -> bytes:
    """The signed release the registry stored for `clf` `version`."""
    token = (fleet.home / "secrets" / "cli-token").read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - the test registry's http URL
        f"{fleet.registry.url}/v1/models/clf/versions/{version}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return Envelope.from_dict(json.loads(response.read())["signed_release"]).to_bytes()


@pytest.fixture(scope="module")  # one per module that uses it
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    root = tmp_path_factory.mktemp("production")
    home = root / "registry-home"
    cli("init", "--home", str(home))
    bundles = asyncio.run(provision(home, [DEVICE, OTHER], root / "bundles"))
    factory = BrokerFactory(root / "brokers")
    out, port = factory.new_workdir("broker-config"), free_port()
    cli(
        "broker-config", "--home", str(home), "--out", str(out), "--tls", "--port", str(port),
        "--listen-host", LOCALHOST, "--tls-host", "localhost", "--tls-host", LOCALHOST,
    )  # fmt: skip
    users = {REGISTRY: (home / "secrets" / "mqtt-password").read_text().strip()}
    users |= {d: (b / BUNDLE_PASSWORD).read_text().strip() for d, b in bundles.items()}
    broker = factory.from_config(
        out / "mosquitto.conf", port=port, tls=True, ca_file=out / "ca.crt", users=users
    )
    yield Production(home, broker, bundles, out)
    factory.close()
