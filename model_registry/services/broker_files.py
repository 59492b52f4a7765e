"""`model-registry broker-config`: mosquitto files for the registry's current fleet."""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from pathlib import Path

from model_registry.config import load_config
from model_registry.errors import ConfigError
from model_registry.mqtt.broker_config import (
    PLUGIN_FILE,
    BrokerConfigFiles,
    find_dynsec_plugin,
    write_broker_config,
)
from model_registry.mqtt.credentials import hash_password
from model_registry.preflight import read_mqtt_password
from model_registry.storage import open_storage


async def write_for_home(
    home: Path,
    out_dir: Path,
    *,
    tls: bool,
    port: int | None,
    listen_host: str,
    tls_hosts: Sequence[str],
    overwrite: bool,
    run_as_user: str | None = None,
    dynsec_plugin: Path | None = None,
) -> list[Path]:
    """Write mosquitto.conf, dynamic-security.json (and TLS material) for every device."""
    plugin = dynsec_plugin or find_dynsec_plugin()
    if plugin is None:
        raise ConfigError(
            f"mosquitto's dynamic-security plugin ({PLUGIN_FILE}) is not installed here; "
            "pass --dynsec-plugin with its path on the broker host "
            "(on Debian and Ubuntu: dpkg -L mosquitto | grep dynamic)"
        )
    config = load_config(home)
    registry_password = read_mqtt_password(config)
    storage = open_storage(config.database_location)
    await storage.open()
    try:
        devices = [(d.device_id, d.password_hash) for d in await storage.devices()]
    finally:
        await storage.close()
    files = write_broker_config(
        out_dir,
        topics=config.topics,
        listen_host=listen_host,
        port=port or (8883 if tls else 1883),
        registry_user=config.mqtt.username,
        registry_password_hash=hash_password(registry_password),
        devices=devices,
        tls=tls,
        dynsec_plugin=plugin,
        tls_hosts=tls_hosts,
        overwrite=overwrite,
        # mosquitto drops root to this account before reading the password and ACL files,
        # so by default it runs as the account that owns them.
        run_as_user=run_as_user or getpass.getuser(),
    )
    return _written(files)


def _written(files: BrokerConfigFiles) -> list[Path]:
    paths = [files.config, files.dynsec_file]
    optional = (files.ca_cert, files.ca_key, files.server_cert, files.server_key)
    return paths + [p for p in optional if p is not None]
