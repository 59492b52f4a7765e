"""The docs' runnable examples, run as a reader would run them, against the real product.

docs/inference-api.md: every curl and tritonclient example runs against a real `edge-agent run`
serving a classifier and a regressor the registry delivered over MQTT (and a second agent on a
unix socket); each JSON output the page shows must have the structure of the real answer.
docs/registry.md: the quick start runs from `init` to `devices list`, with its own `serve` and
agent. The rules for marking a block are in docs/development.md.
"""

from __future__ import annotations

import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from tests.e2e.conftest import start_agent
from tests.support.agent import BIN, AgentProcess
from tests.support.broker import LOCALHOST, free_port
from tests.support.doc_examples import Outcome, Runner, blocks_of, run_document
from tests.support.fleet import Fleet
from tests.support.models import build_classifier, build_regressor

DOCS = Path(__file__).resolve().parents[2] / "docs"
AGENT_ADDRESS = "127.0.0.1:8080"  # the agent's default, which the docs use
GRPC_ADDRESS = "127.0.0.1:8081"  # the [grpc] listen address the docs use
SOCKET_PATH = "/run/edge-agent/inference.sock"  # operations.md's socket, which the docs use
GROUP = "docs"
QUIET_TELEMETRY = "[telemetry]\ninterval_s = 86400\n"  # /v1/status shows no report yet
SERVE_TIMEOUT_S = 120.0


@dataclass
class Served:
    """An agent on TCP serving both models of the page, and one on a unix socket."""

    agent: AgentProcess
    socket: Path
    grpc_port: int


@pytest.fixture(scope="module")
def served(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Push the page's two models, deploy them to one device, start a socket agent too."""
    root = tmp_path_factory.mktemp("docs-models")
    classifier = build_classifier(root / "classifier.onnx")  # 32 features, 3 classes
    regressor = build_regressor(root / "regressor.onnx")  # 8 features
    fleet.push(classifier.onnx_path, "classifier")
    fleet.push(regressor.onnx_path, "regressor")
    agents: list[AgentProcess] = []
    processes: list[subprocess.Popen[bytes]] = []
    try:
        grpc_port = free_port()
        grpc = f'[grpc]\nlisten = "{LOCALHOST}:{grpc_port}"\n'
        agent = start_agent(fleet, agents, "docs-tcp", GROUP, QUIET_TELEMETRY + grpc)
        fleet.deploy("classifier", 1, GROUP)
        fleet.deploy("regressor", 1, GROUP)
        wait_until_served(agent, ("classifier", "regressor"))
        path = tmp_path_factory.mktemp("sock") / "inference.sock"
        processes.append(start_on_socket(fleet.agent("docs-socket", "docs-socket"), path))
        yield Served(agent, path, grpc_port)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=60)
        for each in agents:
            each.stop()


def wait_until_served(agent: AgentProcess, names: tuple[str, ...]) -> None:
    """Until the agent serves every model named (a liveness bound, not a timing assertion)."""
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while any(agent.get(f"/v2/models/{name}") is None for name in names):
        assert time.monotonic() < deadline, agent.log_file.read_text()
        time.sleep(0.2)


def start_on_socket(agent: AgentProcess, path: Path) -> subprocess.Popen[bytes]:
    """`edge-agent run --socket PATH`; return once the socket accepts connections."""
    argv = [str(BIN / "edge-agent"), "run", "--config", str(agent.config)]
    argv += ["--socket", str(path), "--state-dir", str(agent.state_dir)]
    agent.log_file.parent.mkdir(parents=True, exist_ok=True)
    with agent.log_file.open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while not accepts_unix(path):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no agent on {path}:\n{agent.log_file.read_text()}")
        time.sleep(0.1)
    return process


def accepts_unix(path: Path) -> bool:
    """Whether something accepts connections on the unix socket `path`."""
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def ran(outcomes: list[Outcome], fragment: str) -> Outcome:
    """The outcome of the example whose text contains `fragment`."""
    return next(o for o in outcomes if fragment in o.example.block.text)


def test_every_example_of_the_inference_api_runs_against_a_live_agent(
    served: Served, tmp_path: Path
) -> None:
    doc = DOCS / "inference-api.md"
    placeholders = {
        AGENT_ADDRESS: f"{LOCALHOST}:{served.agent.port}",
        SOCKET_PATH: str(served.socket),
        GRPC_ADDRESS: f"{LOCALHOST}:{served.grpc_port}",
    }
    outcomes, failures = run_document(doc, Runner(tmp_path, placeholders))
    assert failures == [], "\n\n".join(failures)
    # Every curl, tritonclient and JSON block of the page is an example or its output: nothing
    # there is merely illustrative, so nothing there can drift.
    code = [b for b in blocks_of(doc) if b.lang in ("sh", "python", "json")]
    assert [b.where for b in code if not (b.runnable or b.is_output)] == []
    assert len(outcomes) >= 7
    assert all(o.example.output is not None for o in outcomes if "curl" in o.example.block.text)
    triton = ran(outcomes, "tritonclient.http")
    assert triton.stdout.strip().endswith("1"), triton.stdout  # the model_version it printed
    over_grpc = ran(outcomes, "tritonclient.grpc")
    assert over_grpc.stdout.strip().endswith("1"), over_grpc.stdout  # the model_version again


@pytest.fixture
def quick_start_files(tmp_path: Path) -> Path:
    """What registry.md's quick start starts from: model.joblib, data.npz and holdout.npz."""
    features, labels = make_classification(
        n_samples=800, n_features=16, n_informative=8, n_classes=3, random_state=5
    )
    features = features.astype(np.float32)
    model = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=5)
    with warnings.catch_warnings():  # "did not converge" is expected noise for a fixture
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features[:600], labels[:600])
    joblib.dump(model, tmp_path / "model.joblib")
    np.savez(tmp_path / "data.npz", X=features[:100])
    np.savez(tmp_path / "holdout.npz", X=features[600:], y=labels[600:])
    return tmp_path


def test_the_registry_quick_start_runs_from_init_to_devices_list(quick_start_files: Path) -> None:
    placeholders = {
        "127.0.0.1:8700": f"{LOCALHOST}:{free_port()}",  # the API
        "127.0.0.1:1883": f"{LOCALHOST}:{free_port()}",  # the embedded broker
        AGENT_ADDRESS: f"{LOCALHOST}:{free_port()}",
    }
    outcomes, failures = run_document(DOCS / "registry.md", Runner(quick_start_files, placeholders))
    assert failures == [], "\n\n".join(failures)
    assert "every device runs version 1" in ran(outcomes, "deploy fraud 1").stdout
    assert "accuracy gate" in ran(outcomes, "model-registry push").stdout

    # The bundle listens where the agent does without a setting, and where the docs say.
    bundle = quick_start_files / "bundles" / "pi-kitchen" / "device.toml"
    assert f'listen = "{AGENT_ADDRESS}"' in bundle.read_text()
    unset = bundle.with_name("no-listen.toml")
    unset.write_text(bundle.read_text().replace(f'listen = "{AGENT_ADDRESS}"', ""))
    checked = subprocess.run(
        [str(BIN / "edge-agent"), "check-config", str(unset)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert f"listen     http://{AGENT_ADDRESS}\n" in checked.stdout
