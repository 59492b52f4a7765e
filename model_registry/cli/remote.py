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

from model_registry.cli.client import ApiClient, ApiError
from model_registry.cli.display import printable
from model_registry.cli.summary import push_summary, size_text
from model_registry.errors import ConflictError, InvalidModelError
from model_registry.file_kinds import describe
from model_registry.home import resolve_home

BROKER_DONE = frozenset({"added"})  # what POST /v1/devices says when the device can log in


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient.locate(args.url, args.token, resolve_home(args.home))


def _print(
    args: argparse.Namespace,
    data: Any,
    rows: list[list[Any]],
    headers: list[str],
    empty: str = "nothing to list",
) -> None:
    """A table, or with no rows the sentence `empty` saying so (and what to do about it)."""
    if args.json:
        print(json.dumps(data, indent=2))
        return
    if not rows:
        print(printable(empty))
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
    model = Path(args.file).read_bytes()
    # Said here, where the file's name is known, before the upload; the registry checks again.
    not_onnx = describe(args.file, model)
    if not_onnx is not None:
        raise InvalidModelError(not_onnx)
    fields = {"model": model, "label": args.label.encode()}
    fields["accuracy_limit"] = str(args.accuracy_limit).encode()
    if args.quantize:
        fields["quantize"] = args.quantize.encode()
    if args.allow_duplicate:
        fields["allow_duplicate"] = b"true"
    if args.eval:
        fields["eval"] = Path(args.eval).read_bytes()
    if args.calibration:
        fields["calibration"] = Path(args.calibration).read_bytes()
    if args.reference:
        fields["reference"] = Path(args.reference).read_bytes()
    fields["max_regression"] = str(args.max_regression).encode()
    if args.min_accuracy is not None:
        fields["min_accuracy"] = str(args.min_accuracy).encode()
    if args.baseline is not None:
        fields["baseline"] = str(args.baseline).encode()
    if args.force:
        fields["force"] = b"true"
    try:
        release = _client(args).post_files(f"/v1/models/{quote(args.name)}/versions", fields)
    except ApiError as e:
        raise _naming_the_files(e, args) from e
    if args.json:
        print(json.dumps(release, indent=2))
        return 0
    for line in push_summary(release):
        print(printable(line))
    return 0


def _naming_the_files(error: ApiError, args: argparse.Namespace) -> ApiError:
    """The API's words for an uploaded dataset, as the file the operator gave."""
    text = str(error)
    for words, option, path in [
        ("the uploaded evaluation set", "--eval", args.eval),
        ("the uploaded calibration rows", "--calibration", args.calibration),
        ("the calibration .npz", "--calibration", args.calibration),
        ("the uploaded reference rows", "--reference", args.reference),
        ("the reference .npz", "--reference", args.reference),
        ("the reference rows", "--reference", args.reference),
    ]:
        if path:
            text = text.replace(words, f"{option} {path}")
    return ApiError(text, error.status)


def models(args: argparse.Namespace) -> int:
    """model-registry models."""
    data = _client(args).get("/v1/models")
    rows = [[m["name"], m["latest_version"], m["releases"], m["created"]] for m in data["models"]]
    empty = "No models yet: push one with model-registry push FILE.onnx --name NAME"
    _print(args, data, rows, ["NAME", "LATEST", "RELEASES", "CREATED"], empty)
    return 0


def versions(args: argparse.Namespace) -> int:
    """model-registry versions NAME: quality, sizes and the gate's verdict of each version."""
    data = _client(args).get(f"/v1/models/{quote(args.name)}/versions")
    rows = [_version_row(v) for v in data["versions"]]
    headers = ["VERSION", "LABEL", "METRIC", "FP32", "INT8", "FP32 SIZE", "SIZE", "QUANTIZATION"]
    _print(args, data, rows, [*headers, "GATE", "CHAMPION GATE", "SHA256", "CREATED"])
    return 0


def _version_row(version: dict[str, Any]) -> list[Any]:
    build = version["build"] if isinstance(version.get("build"), dict) else {}
    # Classifiers report accuracy, regressors R2; a push without --eval has neither.
    metric = next((m for m in ("accuracy", "r2") if build.get(f"{m}_fp32") is not None), None)
    fp32_size = build.get("fp32_size")
    return [
        version["version"],
        version["label"] or None,
        {"accuracy": "accuracy", "r2": "R2"}.get(metric or ""),
        build.get(f"{metric}_fp32") if metric else None,
        build.get(f"{metric}_int8") if metric else None,
        size_text(fp32_size) if isinstance(fp32_size, int) else None,
        size_text(int(version["size"])),
        build.get("quantization"),
        _gate(build.get("accuracy_gate")),
        _gate(build.get("champion_gate")),
        version["sha256"][:12],
        version["created"],
    ]


def _gate(verdict: Any) -> str | None:
    """A gate's verdict in a cell: its first word (`passed`, `forced`, `not applied`, ...)."""
    return verdict.split(":", 1)[0] if isinstance(verdict, str) else None


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
    empty = f"No devices in group {args.group!r}" if args.group else "No devices yet"
    empty += ": provision one with model-registry devices add ID --group GROUP --out DIR"
    _print(args, data, rows, [*headers, "LAST ERROR"], empty)
    _warn_if_registry_unconnected(data.get("registry"))
    return 0


def _warn_if_registry_unconnected(registry: Any) -> None:
    """Say so when the registry itself cannot hear the broker, so no one blames the devices."""
    if not isinstance(registry, dict) or registry.get("broker_connected") is not False:
        return
    since = f" since {registry['since']}" if registry.get("since") else ""
    print(
        printable(
            f"model-registry devices list: warning: the registry is not connected to its "
            f"MQTT broker{since}; it cannot hear any device, so their states are as last "
            "received (check the broker and the registry log)"
        ),
        file=sys.stderr,
    )


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
