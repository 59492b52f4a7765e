"""The arguments of `model-registry rollout ...` (the rest of the contract is in parser.py)."""

from __future__ import annotations

import argparse

from model_registry.cli.flags import api_flags, json_flag


def add_rollout_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`rollout start|status|list|pause|resume|abort`."""
    rollout = commands.add_parser("rollout", help="roll a version out wave by wave, halting itself")
    sub = rollout.add_subparsers(dest="rollout_command", metavar="COMMAND", required=True)
    start = sub.add_parser("start", help="start a staged rollout of a version to a group")
    api_flags(start)
    start.add_argument("name")
    start.add_argument("version", type=int)
    start.add_argument("--group", required=True, help="the group to roll out to")
    start.add_argument(
        "--steps", metavar="P,P,...", help="cumulative percent per wave (default 5,25,100)"
    )
    start.add_argument(
        "--soak", metavar="DURATION", help="how long each wave's gates must hold (default 10m)"
    )
    start.add_argument(
        "--canary", nargs="+", metavar="ID", help="these devices form the first wave"
    )
    start.add_argument(
        "--force", action="store_true",
        help="stop a running experiment of the model in the group (refused otherwise)",
    )  # fmt: skip
    start.add_argument(
        "--manual", action="store_true", help="wait for `rollout resume` before each next wave"
    )
    start.add_argument("--policy", metavar="FILE.toml", help="policy settings (the flags win)")
    start.add_argument("--wait", action="store_true", help="follow it as `rollout status --wait`")
    json_flag(start)
    status = sub.add_parser("status", help="one rollout: its waves, gates and decisions")
    api_flags(status)
    status.add_argument("id", type=int, metavar="ID")
    status.add_argument(
        "--wait",
        action="store_true",
        help="follow it until it completes, halts, is aborted or waits for resume",
    )
    json_flag(status)
    many = sub.add_parser("list", help="rollouts, newest first")
    api_flags(many)
    many.add_argument("--model", help="only this model's")
    json_flag(many)
    for name, text in (
        ("pause", "no new wave starts until resumed; the gates keep watching"),
        ("resume", "let a paused or waiting rollout move on"),
        ("abort", "stop for good; moved devices get their previous version back"),
    ):
        action = sub.add_parser(name, help=text)
        api_flags(action)
        action.add_argument("id", type=int, metavar="ID")
        json_flag(action)
