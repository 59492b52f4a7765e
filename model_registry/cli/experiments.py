"""`model-registry experiment start|list|status|promote|stop` (docs/registry.md, "Experiments")."""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from model_registry.cli.display import printable
from model_registry.cli.remote import _client, _print
from model_registry.errors import InvalidInputError


def start(args: argparse.Namespace) -> int:
    """experiment start NAME --control V1 (--treatment V2 --split P | --shadow V2) TARGET."""
    body: dict[str, Any] = {"model": args.name, "control": args.control}
    if args.treatment is not None:
        if args.split is None:
            raise InvalidInputError("--treatment needs --split PERCENT (1 to 99)")
        body.update(treatment=args.treatment, split=args.split)
    else:
        if args.split is not None:
            raise InvalidInputError("--shadow answers no request: give no --split with it")
        body["shadow"] = args.shadow
    body.update({"group": args.group} if args.group else {"devices": args.device})
    experiment = _client(args).post_json("/v1/experiments", body)
    _show(args, experiment)
    return 0


def listing(args: argparse.Namespace) -> int:
    """experiment list [--model NAME]."""
    path = "/v1/experiments" + (f"?model={quote(args.model)}" if args.model else "")
    data = _client(args).get(path)
    rows = [
        [e["id"], e["model"], e["mode"], e["control"], e.get("treatment", e.get("shadow")),
         e["split"], len(e["devices"]), e["status"], e["created"]]
        for e in data["experiments"]
    ]  # fmt: skip
    headers = [
        "ID",
        "MODEL",
        "MODE",
        "CONTROL",
        "CANDIDATE",
        "SPLIT",
        "DEVICES",
        "STATUS",
        "CREATED",
    ]
    _print(args, data, rows, headers, "No experiments yet")
    return 0


def status(args: argparse.Namespace) -> int:
    """experiment status ID: the variants, the tests, the sentence."""
    data = _client(args).get(f"/v1/experiments/{args.id}")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    _headline(data)
    verdict = data["verdict"]
    rows = [_variant_row(v) for v in verdict["variants"]]
    headers = ["VERSION", "ROLE", "DEVICES", "REQUESTS", "5XX", "P99 MS", "ACCURACY (95% CI)",
               "LABELLED", "MAE", "AGREEMENT (95% CI)"]  # fmt: skip
    _print(args, data, rows, headers)
    for test in verdict["tests"]:
        better = f", V{test['better']} better" if test["better"] is not None else ""
        print(
            f"{test['metric']}: {test['test']}, z = {test['z']:.2f}, "
            f"p = {test['p_value']:.4f}{better}"
        )
    if verdict["needed_per_variant"] is not None:
        print(f"labelled answers still needed per variant: {verdict['needed_per_variant']:,}")
    print(printable(verdict["sentence"]))
    return 0


def promote(args: argparse.Namespace) -> int:
    """experiment promote ID: roll out the winner."""
    data = _client(args).post_json(f"/v1/experiments/{args.id}/promote", {})
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    _headline(data)
    rollout = data.get("rollout")
    if rollout is not None:
        print(f"rollout {rollout['id']}: v{rollout['version']} to group {rollout['group']} "
              f"(rollout status {rollout['id']})")  # fmt: skip
    deployment = data.get("deployment")
    if deployment is not None:
        count = len(deployment["devices"])
        print(f"deployment {deployment['id']}: v{deployment['version']} to {count} device(s)")
    return 0


def stop(args: argparse.Namespace) -> int:
    """experiment stop ID: every device back to the control."""
    _show(args, _client(args).post_json(f"/v1/experiments/{args.id}/stop", {}))
    return 0


def _show(args: argparse.Namespace, experiment: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(experiment, indent=2))
    else:
        _headline(experiment)


def _headline(e: dict[str, Any]) -> None:
    candidate = (
        f"treatment v{e['treatment']} on {e['split']}%" if e["mode"] == "split"
        else f"shadow v{e['shadow']}"
    )  # fmt: skip
    ended = f" ({e['outcome']})" if e.get("outcome") else ""
    print(printable(
        f"experiment {e['id']} {e['name']}: {e['model']} control v{e['control']}, {candidate}, "
        f"{len(e['devices'])} device(s), {e['status']}{ended}"
    ))  # fmt: skip


def _variant_row(v: dict[str, Any]) -> list[Any]:
    accuracy, agreement = v["accuracy"], v["agreement"]
    return [
        v["version"], v["role"], v["devices"], v["requests"],
        _pct(v["server_error_rate"]), _num(v["latency_ms"]["p99"]),
        _pct(accuracy, interval=True), accuracy["n"] + v["labelled_values"],
        _mean(v["mean_abs_error"]), None if agreement is None else _pct(agreement, interval=True),
    ]  # fmt: skip


def _pct(rate: dict[str, Any], *, interval: bool = False) -> str | None:
    if rate["value"] is None:
        return None
    text = f"{rate['value'] * 100:.1f}%"
    if interval:
        low, high = rate["ci95"]
        text += f" ({low * 100:.1f}-{high * 100:.1f})"
    return text


def _mean(mean: dict[str, Any]) -> str | None:
    if mean["value"] is None:
        return None
    low, high = mean["ci95"]
    return f"{mean['value']:.3g} ({low:.3g}-{high:.3g})"


def _num(value: float | None) -> str | None:
    return None if value is None else f"{value:.3g}"
