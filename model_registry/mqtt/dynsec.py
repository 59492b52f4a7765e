"""mosquitto's dynamic-security plugin: its config file and the commands that change it live.

`broker-config` writes `dynamic-security.json` with every client the registry knows (their
`$7$` hashes carry over unchanged: the plugin stores the same PBKDF2-SHA512 with a 12-byte salt),
and the running registry, the plugin's admin client, adds and removes devices by publishing the
commands below on `$CONTROL/dynamic-security/v1`. Roles are the rules of `acl.py`: one role every
device shares (the shared documents) and one per device (its own assignment and reports), since
the plugin of mosquitto 2.0 has no `%u` in its ACLs. Each device is bound to its device id as
client id, so no client can take over another's session; anything not granted is denied.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from edge_protocol.topics import Topics
from model_registry.errors import InvalidInputError
from model_registry.mqtt.acl import (
    AclRule,
    check_username,
    device_rules,
    registry_rules,
    shared_rules,
)
from model_registry.mqtt.credentials import pbkdf2_fields

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
REGISTRY_ROLE = "registry"
DEVICES_ROLE = "devices"
# Everything not granted below is denied; unsubscribing can only reduce what a client receives.
DEFAULT_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}
# The registry administers the plugin: it adds and removes devices while the broker runs.
_CONTROL_RULE = AclRule("readwrite", "$CONTROL/dynamic-security/#")


def device_role(device_id: str) -> str:
    """The name of the role holding one device's own topics."""
    return f"device:{device_id}"


def config_file(
    topics: Topics, registry_user: str, registry_hash: str, devices: Iterable[tuple[str, str]]
) -> dict[str, Any]:
    """The plugin's JSON config: the registry, every (device id, `$7$` hash), and their roles."""
    check_username(registry_user)
    registry = _client(registry_user, registry_hash, [REGISTRY_ROLE], client_id=None)
    clients, roles, seen = [registry], [], {registry_user}
    for device_id, hashed in devices:
        check_username(device_id)
        if device_id in seen:
            raise InvalidInputError(f"MQTT username {device_id!r} appears twice")
        seen.add(device_id)
        clients.append(_client(device_id, hashed, device_roles(device_id), client_id=device_id))
        roles.append(_role(device_role(device_id), device_rules(topics, device_id)))
    return {
        "defaultACLAccess": DEFAULT_ACCESS,
        "clients": clients,
        "groups": [],
        "roles": [
            _role(REGISTRY_ROLE, (*registry_rules(topics), _CONTROL_RULE)),
            _role(DEVICES_ROLE, shared_rules(topics)),
            *roles,
        ],
    }


def device_roles(device_id: str) -> list[str]:
    """The roles a device's client holds."""
    return [DEVICES_ROLE, device_role(device_id)]


def add_device_commands(topics: Topics, device_id: str, password: str) -> list[dict[str, Any]]:
    """Commands that (re)create a device's client and role with a new password."""
    check_username(device_id)
    role = _role(device_role(device_id), device_rules(topics, device_id))
    create: dict[str, Any] = {
        "command": "createClient",
        "username": device_id,
        "password": password,
        "clientid": device_id,
        "roles": [{"rolename": name} for name in device_roles(device_id)],
    }
    # A client of that name left over on the broker (a registry restored from an older backup)
    # holds a password the registry no longer knows: replace it, which also disconnects it.
    return [*remove_device_commands(device_id), {"command": "createRole", **role}, create]


def remove_device_commands(device_id: str) -> list[dict[str, Any]]:
    """Commands that delete a device's client (disconnecting it) and its role."""
    check_username(device_id)
    return [
        {"command": "deleteClient", "username": device_id},
        {"command": "deleteRole", "rolename": device_role(device_id)},
    ]


def _client(
    username: str, hashed: str, roles: list[str], *, client_id: str | None
) -> dict[str, Any]:
    try:
        iterations, salt, digest = pbkdf2_fields(hashed)
    except InvalidInputError as e:
        raise InvalidInputError(f"{username!r}: {e}") from e
    client: dict[str, Any] = {
        "username": username,
        "roles": [{"rolename": name} for name in roles],
        "password": base64.b64encode(digest).decode("ascii"),
        "salt": base64.b64encode(salt).decode("ascii"),
        "iterations": iterations,
    }
    if client_id is not None:
        client["clientid"] = client_id
    return client


def _role(name: str, rules: Iterable[AclRule]) -> dict[str, Any]:
    """A role granting `rules`: reading is subscribing plus receiving, writing is publishing."""
    acls = []
    for rule in rules:
        if rule.grants("read"):
            acls.append({"acltype": "subscribePattern", "topic": rule.pattern, "allow": True})
            acls.append({"acltype": "publishClientReceive", "topic": rule.pattern, "allow": True})
        if rule.grants("write"):
            acls.append({"acltype": "publishClientSend", "topic": rule.pattern, "allow": True})
    return {"rolename": name, "acls": acls}
