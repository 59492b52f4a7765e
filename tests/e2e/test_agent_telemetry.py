"""A real `edge-agent run` reporting telemetry through the fleet's mosquitto, and its spool
surviving a SIGKILL while the broker is out of reach.

The broker stays up for the test's own subscriber (with the registry's credentials); the agent
is cut off by pointing its config at a closed port and restarting it, which is what it sees of
a network outage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import start_agent
from tests.support.agent import AgentProcess
from tests.support.broker import LOCALHOST, MqttTestClient, free_port
from tests.support.fleet import TOPICS, Fleet
from tests.support.models import BuiltModel, build_classifier

DEVICE = "tele"
MODEL = "tele-clf"
FAST = "[telemetry]\ninterval_s = 1.0\n"  # the shortest interval the config accepts


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    """One classifier, built for this module."""
    return build_classifier(tmp_path_factory.mktemp("tele-models") / "clf.onnx", n_samples=300)


def next_telemetry(watcher: MqttTestClient, deadline: float) -> dict[str, Any]:
    """The next telemetry message of the device, before `deadline` (time.monotonic)."""
    while True:
        message = watcher.next_message(timeout=max(0.0, deadline - time.monotonic()))
        if message.topic == TOPICS.telemetry(DEVICE):
            body: dict[str, Any] = json.loads(message.payload)
            return body


def spooled_files(agent: AgentProcess) -> list[Path]:
    """The message files in the agent's spool, oldest first."""
    return sorted((agent.state_dir / "spool").glob("*.telemetry"))


def wait_for(predicate: Any, what: str, timeout: float = 30) -> None:
    """Poll `predicate` until it holds (a liveness bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_telemetry_reports_requests_and_the_spool_survives_a_kill_while_offline(
    fleet: Fleet, agents: list[AgentProcess], classifier: BuiltModel
) -> None:
    version = fleet.push(classifier.onnx_path, MODEL)["version"]
    agent = start_agent(fleet, agents, DEVICE, DEVICE, FAST)
    fleet.deploy(MODEL, version, DEVICE)
    agent.wait_for_version(MODEL, version)
    rows = classifier.X_eval[:4].tolist()
    with fleet.registry_client() as watcher:
        watcher.subscribe(TOPICS.telemetry(DEVICE))
        # --- online: the reports add up to exactly what was served ---------------------
        for _ in range(3):
            assert agent.infer(MODEL, rows)[0] == 200
        assert agent.infer(MODEL, [[1.0, 2.0]])[0] == 400
        totals = {"2xx": 0, "4xx": 0}
        deadline = time.monotonic() + 30
        while totals != {"2xx": 3, "4xx": 1}:
            report = next_telemetry(watcher, deadline)
            assert report["schema"] == 1
            assert report["device_id"] == DEVICE
            assert report["resources"]["rss_bytes"] > 0
            assert report["resources"]["disk_free_bytes"] > 0
            for key in totals:
                totals[key] += report["requests"][key]
            if features := report["models"].get(MODEL, {}).get("features"):
                # Identical requests: any interval's summary is that of `rows`.
                summary = features[classifier.input_name]
                assert summary["mean"] == pytest.approx(np.mean(rows, axis=0), rel=1e-5, abs=1e-6)
                assert summary["max"] == pytest.approx(np.max(rows, axis=0), rel=1e-6)
        status = agent.get("/v1/status")["telemetry"]
        assert status["reports"] >= 1
        assert status["spool"]["dropped_telemetry"] == 0

        # --- offline: reports pile up on disk; a kill tears the last one -----------------
        agent.stop()
        # Sent, but their acks not yet in: a queued ack may delete them before they are resent.
        unacknowledged = {int(path.name.split(".")[0]) for path in spooled_files(agent)}
        online = agent.config.read_text()
        agent.config.write_text(
            online.replace(f"{LOCALHOST}:{fleet.port}", f"{LOCALHOST}:{free_port()}")
        )
        agent.start()
        assert agent.infer(MODEL, rows)[0] == 200, "serving does not need the broker"
        wait_for(lambda: len(spooled_files(agent)) >= 4, "reports spooled while offline")
        agent.kill()
        spooled = [int(path.name.split(".")[0]) for path in spooled_files(agent)]
        torn = spooled_files(agent)[-1]
        torn.write_bytes(torn.read_bytes()[:20])  # the write the kill interrupted
        kept = [seq for seq in spooled[:-1] if seq not in unacknowledged]

        # --- back online: the spool flushes in order, once each, then reporting goes on ---
        agent.config.write_text(online)
        agent.start()
        arrived: list[int] = []
        deadline = time.monotonic() + 30
        while not arrived or arrived[-1] <= spooled[-1]:  # until a report of this run
            arrived.append(next_telemetry(watcher, deadline)["msg_seq"])
    offline_run = [seq for seq in arrived if kept[0] <= seq <= spooled[-1]]
    assert offline_run == kept, "every spooled report, in order, once; the torn one skipped"
    assert arrived[-1] > spooled[-1], "msg_seq keeps growing across restarts"
    spool = agent.get("/v1/status")["telemetry"]["spool"]
    assert spool["corrupt"] == 1
    assert spool["dropped_telemetry"] == 0
