"""`devices remove` on a fleet behind mosquitto: the broker cuts the device off, for good.

The registry deletes the device's dynamic-security client and role on the running broker, which
closes its connection and refuses its next login, and clears its retained assignment.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest

from tests.e2e.conftest import Models
from tests.support.broker import LOCALHOST, ConnectRefusedError, MqttTestClient
from tests.support.fleet import TOPICS, Fleet
from tests.support.registry import cli


def _login(fleet: Fleet, device_id: str) -> MqttTestClient:
    bundle = fleet.root / "bundles" / device_id
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id,
                         protocol=mqtt.MQTTv311)  # fmt: skip
    client.username_pw_set(device_id, (bundle / "mqtt-password").read_text().strip())
    return MqttTestClient.connect(client, LOCALHOST, fleet.port, timeout=20)


def test_a_removed_device_is_cut_off_and_its_assignment_cleared(
    fleet: Fleet, models: Models
) -> None:
    version = fleet.push(models.v1, "clf")["version"]
    fleet.provision("leaver", "exit")
    fleet.deploy("clf", version, "exit")
    session = _login(fleet, "leaver")
    watcher = fleet.registry_client()
    watcher.subscribe(TOPICS.assignment("leaver"))
    assert watcher.next_message().payload  # the retained assignment is there
    watcher.close()

    removed = cli("devices", "remove", "leaver", *fleet.api())
    assert "Broker: broker credentials removed, device cut off" in removed.stdout
    assert removed.stderr == ""
    assert session.connection_lost.wait(20)
    with pytest.raises(ConnectRefusedError):
        _login(fleet, "leaver")
    watcher = fleet.registry_client()
    watcher.subscribe(TOPICS.assignment("leaver"))
    # A barrier: retained messages of a subscription arrive before anything published after it.
    barrier = TOPICS.assignment("barrier")
    watcher.subscribe(barrier)
    watcher.publish(barrier, b"barrier")
    assert [m.topic for m in watcher.collect_until(barrier)] == [barrier]  # nothing retained
    watcher.close()
