"""Commands on one device and on API tokens: devices show/move/remove, token list/revoke.

`devices show` prints a device the way an operator reads it: what it runs, then its recent
events and telemetry as one line each; `--json` prints the API's document unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

from model_registry.cli.client import ApiClient
from model_registry.cli.display import printable
from model_registry.cli.remote import _client, _error_text, _print
from model_registry.cli.summary import size_text
from model_registry.errors import InvalidInputError

MAX_MESSAGES = 1000  # what GET /v1/devices/{id} returns at most of each


def _device_path(device_id: str) -> str:
    return f"/v1/devices/{quote(device_id, safe='')}"


def devices_show(args: argparse.Namespace) -> int:
    """model-registry devices show ID [--events N] [--telemetry N]."""
    for name in ("events", "telemetry"):
        if not 1 <= getattr(args, name) <= MAX_MESSAGES:
            raise InvalidInputError(f"--{name} must be from 1 to {MAX_MESSAGES}")
    query = f"?events={args.events}&telemetry={args.telemetry}"
    device = _client(args).get(_device_path(args.device_id) + query)
    if args.json:
        print(json.dumps(device, indent=2))
        return 0
    for line in device_lines(device):
        print(printable(line))
    return 0


def device_lines(device: dict[str, Any]) -> list[str]:
    """The readable form of GET /v1/devices/{id}."""
    trust = _object(device.get("trust"))
    agent = device.get("agent_version") or "unknown"
    lines = [
        f"Device {device['device_id']} in group {device['group']}: {device['connection']}, "
        f"last seen {device['last_seen'] or 'never'}",
        f"  agent {agent}, root v{trust.get('root_version', '?')}, assignment seq "
        f"{device['assignment_seq']} (the device has {trust.get('assignment_seq', '?')})",
    ]
    if device.get("last_error"):
        lines.append(f"  last error: {_error_text(device['last_error'])}")
    if not device["models"]:
        lines.append("Models: none assigned yet (model-registry deploy NAME VERSION --device ID)")
    else:
        lines.append("Models:")
    for name, model in device["models"].items():
        error = f", last error: {model['last_error']}" if model.get("last_error") else ""
        lines.append(
            f"  {name}: assigned {model.get('assigned') or '-'}, "
            f"active {model.get('active') or '-'}, phase {model.get('phase') or '-'}{error}"
        )
    lines.append(f"Recent events (newest first, {len(device['events'])}):")
    lines += [f"  {e['received']}  {event_text(e['body'])}" for e in device["events"]]
    telemetry = device["telemetry"]
    lines.append(f"Telemetry (oldest first, {len(telemetry)}):")
    lines += [f"  {t['received']}  {telemetry_text(t['body'])}" for t in telemetry]
    return lines


def event_text(body: dict[str, Any]) -> str:
    """`downloading clf v3 (4/10 chunks)`, `rejected clf v3: chunk_hash: chunk 4 ...`."""
    text = str(body.get("event", "?"))
    if body.get("model"):
        text += f" {body['model']} v{body.get('version', '?')}"
    progress = _object(body.get("progress"))
    if "chunks_done" in progress:
        text += f" ({progress['chunks_done']}/{progress.get('chunks_total', '?')} chunks)"
    why = [str(body[k]) for k in ("reason", "detail") if body.get(k)]
    return text + (f": {': '.join(why)}" if why else "")


def telemetry_text(body: dict[str, Any]) -> str:
    """`requests 120 (2xx 118, 5xx 2), cpu 3.1%, rss 48.2 MiB, spool 0 pending`."""
    parts = []
    requests = _object(body.get("requests"))
    if requests:
        classes = ", ".join(f"{k} {v}" for k, v in requests.items() if k != "total")
        by_class = f" ({classes})" if classes else ""
        parts.append(f"requests {requests.get('total', '?')}{by_class}")
    resources = _object(body.get("resources"))
    if isinstance(resources.get("cpu_percent"), int | float):
        parts.append(f"cpu {resources['cpu_percent']:.1f}%")
    if isinstance(resources.get("rss_bytes"), int):
        parts.append(f"rss {size_text(resources['rss_bytes'])}")
    spool = _object(body.get("spool"))
    if "pending" in spool:
        parts.append(f"spool {spool['pending']} pending")
    return ", ".join(parts) or "(no measurements)"


def _object(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: what a device reported is not trusted."""
    return value if isinstance(value, dict) else {}


def devices_move(args: argparse.Namespace) -> int:
    """model-registry devices move ID --group G."""
    client = _client(args)
    before = client.get(_device_path(args.device_id) + "?events=1&telemetry=1")
    device = client.patch_json(_device_path(args.device_id), {"group": args.group})
    if args.json:
        print(json.dumps(device, indent=2))
        return 0
    if before["group"] == device["group"]:
        print(printable(f"{device['device_id']} is already in group {device['group']}"))
        return 0
    moved = f"Moved {device['device_id']} from group {before['group']} to {device['group']}"
    print(printable(moved))
    for line in _group_hints(client, device):
        print(printable(line))
    return 0


def _group_hints(client: ApiClient, device: dict[str, Any]) -> list[str]:
    """What the device runs against what its new group was last deployed, and how to match it."""
    lines = ["Its assignment is unchanged: the new group's deployments are not applied to it."]
    newest: dict[str, dict[str, Any]] = {}
    for past in client.get("/v1/deployments")["deployments"]:  # newest first
        if past["target"] == {"group": device["group"]}:
            newest.setdefault(past["model"], past)
    for model, past in sorted(newest.items()):
        assigned = (device["models"].get(model) or {}).get("assigned")
        if assigned != past["version"]:
            lines.append(
                f"  group {device['group']} was last given {model} version {past['version']} "
                f"(deployment {past['id']}); this device has {assigned or 'none'}: "
                f"model-registry deploy {model} {past['version']} --device {device['device_id']}"
            )
    return lines


def devices_remove(args: argparse.Namespace) -> int:
    """model-registry devices remove ID."""
    removed = _client(args).delete(_device_path(args.device_id))
    broker = removed.get("broker") or {}
    if args.json:
        print(json.dumps(removed, indent=2))
    else:
        print(printable(f"Removed device {removed['device_id']} (group {removed['group']})"))
        if broker.get("status") == "removed":
            print(printable(f"Broker: {broker.get('detail')}"))
    if broker.get("status") != "removed":
        # The records are gone either way; the login may not be: say what to do about it.
        warning = f"model-registry devices remove: warning: {broker.get('detail')}"
        print(printable(warning), file=sys.stderr)
    return 0


def token_list(args: argparse.Namespace) -> int:
    """model-registry token list."""
    data = _client(args).get("/v1/tokens")
    rows = [[t["id"], t["name"], t["role"], t["created"], t["last_used"]] for t in data["tokens"]]
    _print(args, data, rows, ["ID", "NAME", "ROLE", "CREATED", "LAST USED"])
    return 0


def token_revoke(args: argparse.Namespace) -> int:
    """model-registry token revoke ID."""
    token = _client(args).delete(f"/v1/tokens/{args.id}")
    if args.json:
        print(json.dumps(token, indent=2))
        return 0
    print(printable(f"Revoked {token['role']} token {token['id']} ({token['name']!r})"))
    return 0
