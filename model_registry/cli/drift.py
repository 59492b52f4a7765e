"""`model-registry drift NAME [--device ID] [--window 1h]`: the drift table, worst first."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote, urlencode

from model_registry.cli.remote import _client, _print

HEADERS = ["DEVICE", "VERSION", "FEATURE", "PSI", "MAX CDF GAP", "SAMPLES", "STATUS"]
FLEET = "(fleet)"  # the row of every device together


def drift(args: argparse.Namespace) -> int:
    """model-registry drift NAME: each feature's PSI against the release's profile."""
    query = {k: v for k, v in (("device", args.device), ("window", args.window)) if v}
    path = f"/v1/models/{quote(args.name, safe='')}/drift"
    data = _client(args).get(path + (f"?{urlencode(query)}" if query else ""))
    rows = [_row(feature) for feature in data["features"]]
    empty = (
        f"No drift to show for {args.name} in the last {data['window_s']} s: no release of it "
        "with a profile (push with --eval or --reference) has reported bins or predictions"
    )
    _print(args, data, rows, HEADERS, empty)
    return 0


def _row(feature: dict[str, Any]) -> list[Any]:
    return [
        feature["device_id"] or FLEET,
        feature["version"],
        feature["feature"],
        _number(feature["psi"]),
        _number(feature["max_cdf_gap"]),
        feature["samples"],
        feature["status"],
    ]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
