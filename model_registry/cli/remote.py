"""Commands that call the API: push, models, versions, devices, token (deploys: deployments.py)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from model_registry.cli.client import ApiClient
from model_registry.cli.display import printable
from model_registry.cli.summary import push_summary
from model_registry.errors import ConflictError
from model_registry.home import resolve_home

BROKER_DONE = frozenset({"added"})  # what POST /v1/devices says when the device can log in


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient.locate(args.url, args.token, resolve_home(args.home))


def _print(args: argparse.Namespace, data: Any, rows: list[list[Any]], headers: list[str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
        return
    # Cells hold what devices and publishers sent: never let it reach the terminal raw.
    text_rows = [[("-" if cell is None else printable(cell)) for cell in row] for row in rows]
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
    fields["max_regression"] = str(args.max_regression).encode()
    if args.min_accuracy is not None:
        fields["min_accuracy"] = str(args.min_accuracy).encode()
    if args.baseline is not None:
        fields["baseline"] = str(args.baseline).encode()
    if args.force:
        fields["force"] = b"true"
    release = _client(args).post_files(f"/v1/models/{quote(args.name)}/versions", fields)
    if args.json:
        print(json.dumps(release, indent=2))
        return 0
    for line in push_summary(release):
        print(printable(line))
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
            *_scores(v["build"]),
            _verdict(v["build"].get("champion_gate")),
            v["created"],
        ]
        for v in data["versions"]
    ]
    headers = ["VERSION", "LABEL", "SIZE", "SHA256", "QUANTIZATION", "FP32", "INT8"]
    _print(args, data, rows, [*headers, "CHAMPION GATE", "CREATED"])
    return 0


def _scores(build: dict[str, Any]) -> list[str | None]:
    """Accuracy (or R^2) of the fp32 model and of the int8 one, as the build measured them."""
    metric = "accuracy" if "accuracy_fp32" in build else "r2"
    prefix = "" if metric == "accuracy" else "R^2 "
    return [(prefix + build[key]) if key in build else None
            for key in (f"{metric}_fp32", f"{metric}_int8")]  # fmt: skip


def _verdict(verdict: Any) -> str | None:
    """The champion gate's verdict in a cell: its first word (`passed`, `forced`, `skipped`)."""
    if not isinstance(verdict, str):
        return None
    return verdict.split(":", 1)[0]


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
    print(printable(f"Registered device {device['device_id']} in group {device['group']}"))
    print(f"Bundle written to {out.absolute()}: start it with")
    print(f"  edge-agent run --config {out.absolute() / 'device.toml'}")
    broker = device.get("broker") or {}
    if broker.get("status") in BROKER_DONE:
        print(f"Broker: {broker.get('detail')}")
    else:
        # The device is registered either way; say plainly that it cannot log in yet.
        print(f"model-registry devices add: warning: {broker.get('detail')}", file=sys.stderr)
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
                    device.get("connection") or ("online" if device["online"] else "offline"),
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
        print(printable(f"Created {token['role']} token {token['name']!r} (shown once):"))
        print(token["token"])
    return 0
