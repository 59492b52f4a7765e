"""mosquitto files as `model-registry broker-config` writes them, and a broker started on them."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from edge_protocol.topics import Topics
from model_registry.mqtt.broker_config import (
    BrokerConfigFiles,
    find_dynsec_plugin,
    write_broker_config,
)
from model_registry.mqtt.credentials import generate_password, hash_password
from tests.support.broker import (
    LOCALHOST,
    Broker,
    start_broker,
)

TOPICS = Topics()
P = TOPICS.prefix
REGISTRY = "registry"
DEV, OTHER = "dev-a", "dev-b"
SHA = "ef" * 32
NOT_AUTHORIZED = 0x87
ME = pwd.getpwuid(os.geteuid()).pw_name  # mosquitto started as root would switch to `mosquitto`
V311 = MQTTProtocolVersion.MQTTv311


def dynsec_plugin() -> Path:
    """The dynamic-security plugin of the mosquitto installed here (part of the package)."""
    plugin = find_dynsec_plugin()
    if plugin is None:
        pytest.fail("mosquitto_dynamic_security.so not found: run `apt-get install -y mosquitto`")
    return plugin


def provision(names: tuple[str, ...]) -> dict[str, str]:
    """Fresh passwords for the registry and `names`."""
    return {name: generate_password() for name in (REGISTRY, *names)}


def write(
    out: Path, users: dict[str, str], *, port: int = 18830, **options: object
) -> BrokerConfigFiles:
    """write_broker_config with the users' hashes and defaults a test can override."""
    devices = [(name, hash_password(pw)) for name, pw in users.items() if name != REGISTRY]
    arguments: dict[str, object] = {
        "topics": TOPICS,
        "listen_host": LOCALHOST,
        "port": port,
        "registry_user": REGISTRY,
        "registry_password_hash": hash_password(users[REGISTRY]),
        "devices": devices,
        "tls": False,
        "run_as_user": ME,
        "dynsec_plugin": dynsec_plugin(),
        **options,
    }
    return write_broker_config(out, **arguments)  # type: ignore[arg-type]


def start(files: BrokerConfigFiles, port: int, users: dict[str, str], tls: bool) -> Broker:
    """Run mosquitto on the generated mosquitto.conf, untouched."""
    return start_broker(files.config, port=port, users=users, tls=tls, ca_file=files.ca_cert)
