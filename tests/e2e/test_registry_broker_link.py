"""The registry's own broker link: a lost broker is logged once, and `devices list` says so."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.support.broker import LOCALHOST, BrokerFactory
from tests.support.models import ModelSet
from tests.support.registry import RegistryProcess, cli, home_with_broker

WAIT_S = 90.0  # paho retries at most every 30 s; a generous bound on the wait, not a timing claim


def _listing(home: Path) -> tuple[dict[str, Any], str]:
    result = cli("devices", "list", "--json", "--home", str(home))
    return json.loads(result.stdout), result.stderr


def _wait_for_link(home: Path, connected: bool) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        listing, _ = _listing(home)
        if listing["registry"]["broker_connected"] is connected:
            return listing
        assert time.monotonic() < deadline, f"broker_connected never became {connected}"
        time.sleep(0.5)


def test_a_stopped_broker_is_the_registrys_problem_and_is_said_so(
    broker_factory: BrokerFactory, onnx_models: ModelSet, tmp_path: Path
) -> None:
    home, broker = home_with_broker(tmp_path, broker_factory)
    port = broker.port
    registry = RegistryProcess(home, ("--mqtt-url", f"mqtt://{LOCALHOST}:{port}"))
    registry.start()
    try:
        at = ("--home", str(home))
        cli("devices", "add", "pi-1", "--group", "lab", "--out", str(tmp_path / "b"), *at)
        cli("push", str(onnx_models.regressor.onnx_path), "--name", "reg", *at)
        listing, stderr = _listing(home)
        assert listing["registry"]["broker_connected"] is True
        assert listing["registry"]["since"]
        assert "not connected" not in stderr

        broker.stop()
        down = _wait_for_link(home, connected=False)
        assert down["registry"]["since"]
        table = cli("devices", "list", "--home", str(home))
        assert "pi-1" in table.stdout
        assert "the registry is not connected to its MQTT broker since" in table.stderr
        assert down["registry"]["since"] in table.stderr
        # What must reach devices is refused at once, rather than waiting out the outage.
        for args, refused in [
            (("deploy", "reg", "1", "--group", "lab"), "nothing was deployed"),
            (("devices", "remove", "pi-1"), "device 'pi-1' was not removed"),
            (
                ("devices", "add", "pi-2", "--out", str(tmp_path / "b2")),
                "device 'pi-2' was not provisioned",
            ),
        ]:
            result = cli(*args, *at, check=False)
            assert result.returncode == 1
            assert "the registry is not connected to its MQTT broker since" in result.stderr
            assert f"so no device can be told: {refused}; check the broker" in result.stderr
        assert cli("deployments", "list", "--json", *at).stdout.count('"id"') == 0
        assert [d["device_id"] for d in _listing(home)[0]["devices"]] == ["pi-1"]
        assert not (tmp_path / "b2").exists()

        broker.start()
        up = _wait_for_link(home, connected=True)
        assert up["registry"]["since"] >= down["registry"]["since"]
        assert "not connected" not in cli("devices", "list", "--home", str(home)).stderr
    finally:
        registry.stop()
    log = registry.log_file.read_text()
    lost = [line for line in log.splitlines() if "lost the connection to the broker" in line]
    assert len(lost) == 1, log  # once per lost connection, not once per failed retry
    assert f"{LOCALHOST}:{port}" in lost[0]
    assert "connected to the broker at" in log.split(lost[0], 1)[1]
    assert "Traceback" not in log
