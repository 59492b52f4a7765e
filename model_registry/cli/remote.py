"""Commands that call the API: push, models, versions, deploy, rollback, devices, token."""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from edge_protocol import parse_time
from model_registry.cli.client import ApiClient
from model_registry.cli.summary import push_summary
from model_registry.errors import ConflictError, InvalidInputError, RegistryError
from model_registry.home import resolve_home

POLL_INTERVAL_S = 1.0
DEADLINE_GRACE_S = 30.0  # past the deadline, for the registry to declare silent devices
# Shown in this order when following a deployment; see model_registry/services/fleet.py.
STATUS_ORDER = (
    "activated", "probation", "downloading", "pending",
    "failed", "rolled_back", "silent", "superseded",
)  # fmt: skip
_MOVING = frozenset({"pending", "downloading", "probation"})


class DeploymentFailedError(RegistryError):
    """A followed deployment ended with devices that do not run its release, or timed out."""


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient.locate(args.url, args.token, resolve_home(args.home))


def _print(args: argparse.Namespace, data: Any, rows: list[list[Any]], headers: list[str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
        return
    text_rows = [[("-" if cell is None else str(cell)) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text_rows)) for i, h in enumerate(headers)]
    for row in [headers, *text_rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def push(args: argparse.Namespace) -> int:
    """model-registry push."""
    fields = {"model": Path(args.file).read_bytes(), "label": args.label.encode()}
    fields["accuracy_limit"] = str(args.accuracy_limit).encode()
    if args.quantize:
        fields["quantize"] = args.quantize.encode()
    if args.eval:
        fields["eval"] = Path(args.eval).read_bytes()
    if args.calibration:
        fields["calibration"] = Path(args.calibration).read_bytes()
    release = _client(args).post_files(f"/v1/models/{quote(args.name)}/versions", fields)
    if args.json:
        print(json.dumps(release, indent=2))
        return 0
    print("\n".join(push_summary(release)))
    return 0


def models(args: argparse.Namespace) -> int:
    """model-registry models."""
    data = _client(args).get("/v1/models")
    rows = [[m["name"], m["latest_version"], m["releases"], m["created"]] for m in data["models"]]
    _print(args, data, rows, ["NAME", "LATEST", "RELEASES", "CREATED"])
    return 0


def versions(args: argparse.Namespace) -> int:
    """model-registry versions NAME."""
    data = _client(args).get(f"/v1/models/{quote(args.name)}/versions")
    rows = [
        [
            v["version"],
            v["label"],
            v["size"],
            v["sha256"][:12],
            v["build"].get("quantization"),
            v["created"],
        ]
        for v in data["versions"]
    ]
    _print(args, data, rows, ["VERSION", "LABEL", "SIZE", "SHA256", "QUANTIZATION", "CREATED"])
    return 0


def _target(args: argparse.Namespace) -> dict[str, Any]:
    return {"group": args.group} if args.group else {"devices": args.device}


def deploy(args: argparse.Namespace) -> int:
    """model-registry deploy NAME VERSION [--wait [--timeout SECONDS]]."""
    wait = args.wait or args.timeout is not None
    if args.timeout is not None and args.timeout <= 0:
        raise InvalidInputError(
            f"--timeout must be a positive number of seconds, not {args.timeout}"
        )
    client = _client(args)
    body = {"model": args.name, "version": args.version, **_target(args)}
    deployment = client.post_json("/v1/deployments", body)
    if not wait:
        _print_deployment(args, deployment)
        return 0
    if not args.json:
        _print_deployment(args, deployment)
    timeout_s = args.timeout or _until_deadline(deployment)
    followed = _follow(client, deployment, timeout_s, show=not args.json)
    if args.json:
        print(json.dumps(followed, indent=2))
    _check_outcome(followed, timeout_s)
    if not args.json:
        print(f"Deployment {followed['id']}: every device runs version {followed['version']}")
    return 0


def _until_deadline(deployment: dict[str, Any]) -> float:
    lifetime = parse_time(deployment["deadline"]) - parse_time(deployment["created"])
    return lifetime.total_seconds() + DEADLINE_GRACE_S


def _follow(
    client: ApiClient, deployment: dict[str, Any], timeout_s: float, *, show: bool
) -> dict[str, Any]:
    """Poll the deployment, printing its progress when it changes, until done or out of time."""
    give_up = time.monotonic() + timeout_s
    shown = None
    while True:
        current: dict[str, Any] = client.get(f"/v1/deployments/{deployment['id']}")
        line = _progress_line(current)
        if show and line != shown:
            print(line, flush=True)
            shown = line
        left = give_up - time.monotonic()
        if current["progress"]["done"] or left <= 0:
            return current
        time.sleep(min(POLL_INTERVAL_S, left))


def _progress_line(deployment: dict[str, Any]) -> str:
    counts = deployment["progress"]["counts"]
    parts = [f"{counts[s]} {s.replace('_', ' ')}" for s in STATUS_ORDER if counts.get(s)]
    total = len(deployment["devices"])
    return f"  {counts.get('activated', 0)}/{total} activated: {', '.join(parts)}"


def _check_outcome(deployment: dict[str, Any], timeout_s: float) -> None:
    """Raise DeploymentFailedError naming the devices that do not run the release, and why."""
    progress = deployment["progress"]
    if progress["succeeded"]:
        return
    devices = progress["devices"]
    failed = [_failure(d) for d in devices if d["status"] not in _MOVING | {"activated"}]
    if progress["done"]:
        raise DeploymentFailedError(f"deployment {deployment['id']} failed on {', '.join(failed)}")
    waiting = [f"{d['device_id']} ({d['status']})" for d in devices if d["status"] in _MOVING]
    failures = f"; it failed on {', '.join(failed)}" if failed else ""
    raise DeploymentFailedError(
        f"deployment {deployment['id']} did not finish within {timeout_s:g} s: "
        f"{', '.join(waiting)} still under way{failures}"
    )


def _failure(device: dict[str, Any]) -> str:
    why = device["reason"] if device["status"] in ("failed", "rolled_back") else device["detail"]
    status = device["status"].replace("_", " ")
    return f"{device['device_id']} ({status}: {why or 'no reason given'})"


def rollback(args: argparse.Namespace) -> int:
    """model-registry rollback NAME."""
    deployment = _client(args).post_json(f"/v1/models/{quote(args.name)}/rollback", _target(args))
    _print_deployment(args, deployment)
    return 0


def _print_deployment(args: argparse.Namespace, deployment: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(deployment, indent=2))
        return
    devices = deployment["devices"]
    print(
        f"Deployment {deployment['id']}: {deployment['kind']} {deployment['model']} "
        f"version {deployment['version']} to {len(devices)} device(s): {', '.join(devices)}"
    )


def devices_add(args: argparse.Namespace) -> int:
    """model-registry devices add ID --out DIR."""
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ConflictError(f"{out} exists and is not empty; choose a new bundle directory")
    body: dict[str, Any] = {"device_id": args.device_id, "group": args.group}
    if args.mqtt_url:
        body["mqtt_url"] = args.mqtt_url
    device = _client(args).post_json("/v1/devices", body)
    out.mkdir(parents=True, exist_ok=True)
    for name, encoded in device.pop("bundle").items():
        path = out / name
        path.write_bytes(base64.b64decode(encoded))
        os.chmod(path, 0o600 if name == "mqtt-password" else 0o644)
    if args.json:
        print(json.dumps({**device, "bundle_dir": str(out.absolute())}, indent=2))
        return 0
    print(f"Registered device {device['device_id']} in group {device['group']}")
    print(f"Bundle written to {out.absolute()}: start it with")
    print(f"  edge-agent run --config {out.absolute() / 'device.toml'}")
    return 0


def devices_list(args: argparse.Namespace) -> int:
    """model-registry devices list."""
    path = "/v1/devices" + (f"?group={quote(args.group)}" if args.group else "")
    data = _client(args).get(path)
    rows = []
    for device in data["devices"]:
        models = device["models"] or {"-": {}}
        for name, status in models.items():
            rows.append(
                [
                    device["device_id"],
                    device["group"],
                    "online" if device["online"] else "offline",
                    name,
                    status.get("assigned"),
                    status.get("active"),
                    status.get("phase"),
                    device["last_seen"],
                    _error_text(device.get("last_error")),
                ]
            )
    headers = ["DEVICE", "GROUP", "STATE", "MODEL", "ASSIGNED", "ACTIVE", "PHASE", "LAST SEEN"]
    _print(args, data, rows, [*headers, "LAST ERROR"])
    return 0


def _error_text(error: dict[str, Any] | None) -> str | None:
    """`rejected chunk_hash (clf v3)`: a device's last error in a table cell."""
    if not error:
        return None
    about = f" ({error['model']} v{error.get('version', '?')})" if error.get("model") else ""
    return f"{error.get('event', 'error')} {error.get('reason', '')}".rstrip() + about


def token_create(args: argparse.Namespace) -> int:
    """model-registry token create --role R."""
    body = {"role": args.role, **({"name": args.name} if args.name else {})}
    token = _client(args).post_json("/v1/tokens", body)
    if args.json:
        print(json.dumps(token, indent=2))
    else:
        print(f"Created {token['role']} token {token['name']!r} (shown once):")
        print(token["token"])
    return 0
