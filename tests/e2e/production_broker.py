"""A registry home, two devices, and mosquitto on the files `broker-config --tls` writes."""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from paho.mqtt.enums import MQTTProtocolVersion

from edge_protocol import Topics
from model_registry.config import load_config
from model_registry.server import make_context
from model_registry.services.devices import BUNDLE_PASSWORD, add_device
from model_registry.storage import open_storage
from tests.support.broker import (
    LOCALHOST,
    Broker,
    MqttTestClient,
)

V311 = MQTTProtocolVersion.MQTTv311
TOPICS = Topics()
REGISTRY = "registry"
DEVICE, OTHER, NEW = "dev-a", "dev-b", "dev-new"
BIN = Path(sys.executable).parent
SHA = "ab" * 32


@dataclass
class Production:
    """The registry home, the running broker and the provisioned bundles."""

    home: Path
    broker: Broker
    bundles: dict[str, Path]
    broker_dir: Path

    def connect(
        self, username: str | None, host: str = LOCALHOST, client_id: str | None = None
    ) -> MqttTestClient:
        """An MQTT 3.1.1 client over TLS, trusting the generated CA, with its own password.

        A device uses its device id as client id, as the agent does, unless told otherwise.
        """
        if client_id is None:
            client_id = "" if username in (None, REGISTRY) else username
        client = self.broker.paho_client(
            username, client_id=client_id, protocol=V311, reconnect_on_failure=False
        )
        return MqttTestClient.connect(client, host, self.broker.port)


async def provision(home: Path, device_ids: list[str], bundles: Path) -> dict[str, Path]:
    """What `model-registry devices add` does, through the registry's own service."""
    config = load_config(home)
    storage = open_storage(config.database_location)
    await storage.open()
    written = {}
    try:
        for device_id in device_ids:
            bundle = await add_device(make_context(config, storage), device_id, group="prod")
            directory = bundles / device_id
            directory.mkdir(parents=True)
            for name, content in bundle.files.items():
                (directory / name).write_bytes(content)
                (directory / name).chmod(0o600 if name == BUNDLE_PASSWORD else 0o644)
            written[device_id] = directory
    finally:
        await storage.close()
    return written


def marker(channel: str) -> str:
    """A fresh topic under a shared channel, readable by every device."""
    return f"edge/v1/{channel}/marker-{uuid.uuid4().hex[:12]}"
