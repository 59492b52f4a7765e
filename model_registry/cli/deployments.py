"""Commands about deployments: deploy, rollback, and `deployments list` / `deployments show`.

`deploy` and `rollback` send an Idempotency-Key (a fresh UUID, or `--idempotency-key`) and, when
the connection drops before the registry answers, send the same request once more: the registry
then either makes the deployment (the first request never arrived) or returns the one the first
request made. When neither attempt gets an answer the outcome is unknown, and the error says how
to find out and how to repeat the command without deploying twice.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any
from urllib.parse import quote

from edge_protocol import parse_time
from model_registry.cli.client import ApiClient, ApiError, ConnectionLostError
from model_registry.cli.display import printable
from model_registry.cli.remote import _client, _print
from model_registry.errors import InvalidInputError, RegistryError

POLL_INTERVAL_S = 1.0
DEADLINE_GRACE_S = 30.0  # past the deadline, for the registry to declare silent devices
# Shown in this order when following a deployment; see model_registry/services/fleet.py.
STATUS_ORDER = (
    "activated", "probation", "downloading", "pending",
    "failed", "rolled_back", "silent", "superseded",
)  # fmt: skip
_MOVING = frozenset({"pending", "downloading", "probation"})
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
    wait = args.wait or args.timeout is not None
    if args.timeout is not None and args.timeout <= 0:
        raise InvalidInputError(
            f"--timeout must be a positive number of seconds, not {args.timeout}"
        )
    client = _client(args)
    body = {"model": args.name, "version": args.version, **_target(args)}
    check = f"model-registry deployments list --model {args.name}"
    deployment = post_once(client, "/v1/deployments", body, _key(args), check)
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
        done = f"Deployment {followed['id']}: every device runs version {followed['version']}"
        print(printable(done))
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
            print(printable(line), flush=True)
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
    check = f"model-registry deployments list --model {args.name}"
    path = f"/v1/models/{quote(args.name)}/rollback"
    deployment = post_once(_client(args), path, _target(args), _key(args), check)
    _print_deployment(args, deployment)
    return 0


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
    _print(args, data, rows, headers)
    return 0


def deployments_show(args: argparse.Namespace) -> int:
    """model-registry deployments show ID."""
    data = _client(args).get(f"/v1/deployments/{args.id}")
    if not args.json:
        _print_deployment(args, data)
        print(printable(_progress_line(data)))
    rows = [
        [d["device_id"], d["status"], d["reason"], d["detail"]] for d in data["progress"]["devices"]
    ]
    _print(args, data, rows, ["DEVICE", "STATUS", "REASON", "DETAIL"])
    return 0


def _target_text(deployment: dict[str, Any]) -> str:
    return ", ".join(f"{kind} {value}" for kind, value in deployment["target"].items())
