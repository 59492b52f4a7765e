"""Commands about deployments: deploy, rollback, and `deployments list` / `deployments show`.

`--wait` follows a deployment (model_registry/cli/follow.py) until every device is done; a
deploy or rollback also warns on stderr about the targeted devices the registry does not hear
from, since they get the release only when they reconnect.

`deploy` and `rollback` send an Idempotency-Key (a fresh UUID, or `--idempotency-key`) and, when
the connection drops before the registry answers, send the same request once more: the registry
then either makes the deployment (the first request never arrived) or returns the one the first
request made. When neither attempt gets an answer the outcome is unknown, and the error says how
to find out and how to repeat the command without deploying twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from typing import Any
from urllib.parse import quote

from edge_protocol import parse_time
from model_registry.cli.client import ApiClient, ApiError, ConnectionLostError
from model_registry.cli.display import printable
from model_registry.cli.follow import MOVING, follow, summary_line
from model_registry.cli.remote import _client, _print
from model_registry.errors import RegistryError

DEADLINE_GRACE_S = 30.0  # past the deadline, for the registry to declare silent devices
IDEMPOTENCY_HEADER = "Idempotency-Key"


class DeploymentFailedError(RegistryError):
    """A followed deployment ended with devices that do not run its release, or timed out."""


class OutcomeUnknownError(RegistryError):
    """A deploy or rollback went out and no answer came back, even after one retry."""


def post_once(client: ApiClient, path: str, body: dict[str, Any], key: str, check: str) -> Any:
    """POST under an Idempotency-Key; retry once if no answer came; say so if none ever does."""
    headers = {IDEMPOTENCY_HEADER: key}
    try:
        return client.post_json(path, body, headers)
    except ApiError as e:
        if e.status is not None:
            raise  # the registry answered: it did not deploy
        first = e
    try:
        return client.post_json(path, body, headers)  # safe: the same key cannot deploy twice
    except ApiError as e:
        went_out = isinstance(e, ConnectionLostError) or isinstance(first, ConnectionLostError)
        if e.status is not None or not went_out:
            raise  # an answer, or neither request reached the registry: nothing was stored
        raise OutcomeUnknownError(
            f"{e}, twice; the registry may have stored it: run `{check}` "
            f"(GET /v1/deployments) to check; `--idempotency-key {key}` repeats this command "
            "without deploying twice"
        ) from e


def _key(args: argparse.Namespace) -> str:
    key: str = args.idempotency_key or str(uuid.uuid4())
    return key


def _target(args: argparse.Namespace) -> dict[str, Any]:
    return {"group": args.group} if args.group else {"devices": args.device}


def deploy(args: argparse.Namespace) -> int:
    """model-registry deploy NAME VERSION [--wait [--timeout SECONDS]]."""
    client = _client(args)
    body = {"model": args.name, "version": args.version, **_target(args), **_force(args)}
    check = f"model-registry deployments list --model {args.name}"
    deployment = post_once(client, "/v1/deployments", body, _key(args), check)
    return _after_posting(args, client, deployment, "deploy")


def rollback(args: argparse.Namespace) -> int:
    """model-registry rollback NAME [--wait [--timeout SECONDS]]."""
    client = _client(args)
    check = f"model-registry deployments list --model {args.name}"
    path = f"/v1/models/{quote(args.name)}/rollback"
    deployment = post_once(client, path, {**_target(args), **_force(args)}, _key(args), check)
    return _after_posting(args, client, deployment, "rollback")


def _force(args: argparse.Namespace) -> dict[str, bool]:
    return {"force": True} if args.force else {}


def _after_posting(
    args: argparse.Namespace, client: ApiClient, deployment: dict[str, Any], command: str
) -> int:
    """Print the deployment, warn about unreachable devices, and follow it if asked."""
    if not _waits(args) or not args.json:
        _print_deployment(args, deployment)
    _warn_unreachable(deployment, command)
    return _wait(args, client, deployment) if _waits(args) else 0


def _waits(args: argparse.Namespace) -> bool:
    return bool(args.wait or args.timeout is not None)


def _warn_unreachable(deployment: dict[str, Any], command: str) -> None:
    """Name, on stderr, the targeted devices the registry does not hear from now."""
    unreachable = [
        f"{d['device_id']} ({d['connection']}, last seen {d['last_seen'] or 'never'})"
        for d in deployment.get("unreachable") or []
    ]
    if unreachable:
        total = len(deployment["devices"])
        print(
            printable(
                f"model-registry {command}: warning: {len(unreachable)} of {total} device(s) "
                f"are not connected: {', '.join(unreachable)}; each gets its assignment from "
                "the broker when it reconnects"
            ),
            file=sys.stderr,
        )


def _wait(args: argparse.Namespace, client: ApiClient, deployment: dict[str, Any]) -> int:
    """Follow the deployment; 0 when every device runs its release, else DeploymentFailedError."""
    timeout_s = args.timeout or _until_deadline(deployment)
    followed = follow(client, deployment["id"], timeout_s, show=not args.json)
    if args.json:
        print(json.dumps(followed, indent=2))
    _check_outcome(followed, timeout_s)
    if not args.json:
        done = f"Deployment {followed['id']}: every device runs version {followed['version']}"
        print(printable(done))
    return 0


def _until_deadline(deployment: dict[str, Any]) -> float:
    lifetime = parse_time(deployment["deadline"]) - parse_time(deployment["created"])
    return lifetime.total_seconds() + DEADLINE_GRACE_S


def _check_outcome(deployment: dict[str, Any], timeout_s: float) -> None:
    """Raise DeploymentFailedError naming the devices that do not run the release, and why."""
    progress = deployment["progress"]
    if progress["succeeded"]:
        return
    devices = progress["devices"]
    failed = [_failure(d) for d in devices if d["status"] not in MOVING | {"activated"}]
    if progress["done"]:
        raise DeploymentFailedError(f"deployment {deployment['id']} failed on {', '.join(failed)}")
    moving = [d for d in devices if d["status"] in MOVING]
    waiting = [f"{d['device_id']} ({d['status']})" for d in moving if d["connection"] == "online"]
    # A device the registry does not hear from is not "under way": say it is offline.
    unreachable = [
        f"{d['device_id']} is {d['connection']} (still {d['status']}, last seen "
        f"{d['last_seen'] or 'never'})"
        for d in moving
        if d["connection"] != "online"
    ]
    parts = [*unreachable, *([f"{', '.join(waiting)} still under way"] if waiting else [])]
    failures = f"; it failed on {', '.join(failed)}" if failed else ""
    raise DeploymentFailedError(
        f"deployment {deployment['id']} did not finish within {timeout_s:g} s: "
        f"{'; '.join(parts)}{failures}"
    )


def _failure(device: dict[str, Any]) -> str:
    why = device["reason"] if device["status"] in ("failed", "rolled_back") else device["detail"]
    status = device["status"].replace("_", " ")
    return f"{device['device_id']} ({status}: {why or 'no reason given'})"


def _print_deployment(args: argparse.Namespace, deployment: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(deployment, indent=2))
        return
    devices = deployment["devices"]
    print(
        printable(
            f"Deployment {deployment['id']}: {deployment['kind']} {deployment['model']} "
            f"version {deployment['version']} to {len(devices)} device(s): {', '.join(devices)}"
        )
    )


def deployments_list(args: argparse.Namespace) -> int:
    """model-registry deployments list [--model NAME]."""
    path = "/v1/deployments" + (f"?model={quote(args.model)}" if args.model else "")
    data = _client(args).get(path)
    rows = [
        [d["id"], d["kind"], d["model"], d["version"], _target_text(d), len(d["devices"]),
         d["created"], d.get("idempotency_key")]
        for d in data["deployments"]
    ]  # fmt: skip
    headers = ["ID", "KIND", "MODEL", "VERSION", "TARGET", "DEVICES", "CREATED", "KEY"]
    of = f" of model {args.model!r}" if args.model else ""
    _print(args, data, rows, headers, f"No deployments{of} yet")
    return 0


def deployments_show(args: argparse.Namespace) -> int:
    """model-registry deployments show ID [--wait [--timeout SECONDS]]."""
    client = _client(args)
    data = client.get(f"/v1/deployments/{args.id}")
    if _waits(args):
        if not args.json:
            _print_deployment(args, data)
        return _wait(args, client, data)
    if not args.json:
        _print_deployment(args, data)
        print(printable(summary_line(data)))
    rows = [_device_row(d) for d in data["progress"]["devices"]]
    headers = ["DEVICE", "STATUS", "PHASE", "SINCE", "CHUNKS", "CONNECTION", "REASON", "DETAIL"]
    _print(args, data, rows, headers, "None of its devices is registered any more")
    return 0


def _device_row(device: dict[str, Any]) -> list[Any]:
    chunks = device.get("chunks")
    return [
        device["device_id"],
        device["status"],
        device.get("phase"),
        device.get("since"),
        f"{chunks['done']}/{chunks['total']}" if chunks else None,
        device.get("connection"),
        device["reason"],
        device["detail"],
    ]


def _target_text(deployment: dict[str, Any]) -> str:
    return ", ".join(f"{kind} {value}" for kind, value in deployment["target"].items())
