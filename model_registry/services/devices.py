"""Provisioning devices: a record, MQTT credentials, and the bundle the device starts from.

The bundle is everything `edge-agent run --config device.toml` needs: the config, the trust
anchor (`root.json`), the MQTT password and, with TLS, the broker's CA. The password exists only
in the bundle; the registry keeps its PBKDF2 hash for the broker, and hands the running broker
the new login at once (`broker_admin`), saying how that went.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_protocol.fields import is_valid_name
from model_registry.config import EMBEDDED
from model_registry.errors import InvalidInputError, NotFoundError
from model_registry.mqtt.broker_admin import BrokerOutcome, not_connected
from model_registry.mqtt.credentials import generate_password, hash_password
from model_registry.services.context import RegistryContext
from model_registry.storage import DeviceRecord

BUNDLE_CONFIG = "device.toml"
BUNDLE_ROOT = "root.json"
BUNDLE_PASSWORD = "mqtt-password"  # noqa: S105 - a file name
BUNDLE_CA = "ca.crt"
DEFAULT_GROUP = "default"

DEVICE_TOML = """\
# edge-agent configuration for device {device_id!r}, written by `model-registry devices add`.
# Relative paths are relative to this file; docs/configuration.md describes every key.
# Check it with: edge-agent check-config device.toml
device_id = "{device_id}"
# Models, partial downloads and state.json. The systemd unit passes --state-dir instead.
state_dir = "state"

[trust]
# The signed root this device trusts; it follows newer roots from the broker on its own.
root_file = "{root}"

[mqtt]
url = "{mqtt_url}"
username = "{device_id}"
password_file = "{password}"
# CA certificate of the broker (mqtts:// only); empty for a plain mqtt:// broker.
ca_file = "{ca}"
keepalive_s = 30
topic_prefix = "{prefix}"

[models]
# Models this device follows; empty means every model its assignment names.
follow = []

[artifacts]
# "mqtt" fetches chunks from the broker; "http" fetches them from the registry's API.
transport = "mqtt"
http_url = "{http_url}"

[server]
# Local Open Inference Protocol v2 endpoint. Set `socket` to serve on a unix socket instead.
listen = "127.0.0.1:8080"

[telemetry]
# This registry acknowledges what it stores: keep every event and report until it says so,
# also before its first acknowledgement arrives (a broker that crashes then loses nothing).
registry_acks = true
"""


@dataclass(frozen=True)
class DeviceBundle:
    """A provisioned device, the files of its bundle (name -> content), and its broker login."""

    device: DeviceRecord
    files: dict[str, bytes]
    broker: BrokerOutcome


async def add_device(
    ctx: RegistryContext, device_id: str, *, group: str = DEFAULT_GROUP, mqtt_url: str | None = None
) -> DeviceBundle:
    """Register a device, create its MQTT credentials and return its bundle."""
    for label, value in (("device id", device_id), ("group", group)):
        _check_name(label, value)
    if device_id == ctx.config.mqtt.username:
        raise InvalidInputError(f"device id {device_id!r} is the registry's own MQTT user name")
    # Provisioned now, the device could not log in until the broker files were regenerated and
    # mosquitto restarted; refused, it is provisioned in full once the broker is back.
    ctx.require_broker(f"device {device_id!r} was not provisioned")
    password = generate_password()
    record = DeviceRecord(
        device_id=device_id,
        group=group,
        created=ctx.clock().replace(microsecond=0),
        password_hash=hash_password(password),
    )
    files = await _bundle_files(ctx, device_id, password, mqtt_url)
    await ctx.storage.add_device(record)
    access = ctx.broker_access
    broker = not_connected() if access is None else await access.admit(device_id, password)
    return DeviceBundle(record, files, broker)


@dataclass(frozen=True)
class RemovedDevice:
    """A device just removed, and what became of its login on the broker."""

    device: DeviceRecord
    broker: BrokerOutcome


async def remove_device(ctx: RegistryContext, device_id: str) -> RemovedDevice:
    """Revoke a device's broker login, clear its retained assignment and delete its records.

    The records go even when the broker cannot be told: the outcome says so, and the broker
    files `broker-config --force` writes from storage no longer name the device.
    """
    _check_name("device id", device_id)
    await ctx.storage.get_device(device_id)  # an unknown id is a 404 whatever the broker does
    ctx.require_broker(f"device {device_id!r} was not removed")
    async with ctx.state_lock:  # no deploy may assign the device while it goes
        device = await ctx.storage.get_device(device_id)
        broker = await revoke_device(ctx, device_id)
        if ctx.publisher is not None:
            await ctx.publisher.clear_assignment(device_id)
        await ctx.storage.remove_device(device_id)
    return RemovedDevice(device, broker)


async def move_device(ctx: RegistryContext, device_id: str, group: str) -> DeviceRecord:
    """Put a device in another group; its assignment stays as it is until the next deploy."""
    _check_name("group", group)
    async with ctx.state_lock:
        return await ctx.storage.set_device_group(device_id, group)


def _check_name(label: str, value: str) -> None:
    if not is_valid_name(value):
        raise InvalidInputError(
            f"{label} {value!r} must be letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 128)"
        )


async def revoke_device(ctx: RegistryContext, device_id: str) -> BrokerOutcome:
    """Take a device's login off the running broker, which disconnects it."""
    if not is_valid_name(device_id):
        raise InvalidInputError(f"device id {device_id!r} is not a valid name")
    await ctx.storage.get_device(device_id)  # NotFoundError for a device never provisioned
    access = ctx.broker_access
    return not_connected() if access is None else await access.revoke(device_id)


async def _bundle_files(
    ctx: RegistryContext, device_id: str, password: str, mqtt_url: str | None
) -> dict[str, bytes]:
    roots = await ctx.storage.roots()
    if not roots:
        raise NotFoundError("the registry has no root; was the home created with 'init'?")
    ca_file = ctx.config.mqtt.ca_file
    files = {
        BUNDLE_ROOT: roots[-1][1],
        BUNDLE_PASSWORD: password.encode(),
        BUNDLE_CONFIG: DEVICE_TOML.format(
            device_id=device_id,
            root=BUNDLE_ROOT,
            mqtt_url=mqtt_url or device_mqtt_url(ctx),
            password=BUNDLE_PASSWORD,
            ca=BUNDLE_CA if ca_file else "",
            prefix=ctx.config.mqtt.topic_prefix,
            http_url=api_public_url(ctx),
        ).encode(),
    }
    if ca_file:
        files[BUNDLE_CA] = ctx.config.path(ca_file).read_bytes()
    return files


def device_mqtt_url(ctx: RegistryContext) -> str:
    """The broker URL devices should use, from the config."""
    mqtt = ctx.config.mqtt
    if mqtt.device_url:
        return mqtt.device_url
    if ctx.broker_url:
        return ctx.broker_url
    if mqtt.url == EMBEDDED:
        return f"mqtt://{mqtt.embedded_listen}"
    return mqtt.url


def api_public_url(ctx: RegistryContext) -> str:
    """The API URL devices should use for HTTP artifacts, from the config."""
    return ctx.config.api.public_url or ctx.api_url or f"http://{ctx.config.api.listen}"
