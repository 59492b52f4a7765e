"""The arguments of `model-registry experiment ...` (the rest of the contract is in parser.py)."""

from __future__ import annotations

import argparse

from model_registry.cli.flags import api_flags, json_flag, target_flags


def add_experiment_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`experiment start|list|status|promote|stop`."""
    experiment = commands.add_parser("experiment", help="A/B splits and shadows, and their verdict")
    subcommands = experiment.add_subparsers(
        dest="experiment_command", metavar="COMMAND", required=True
    )
    start = subcommands.add_parser("start", help="start a split or a shadow of model NAME")
    api_flags(start)
    start.add_argument("name", metavar="NAME", help="the model")
    start.add_argument("--control", type=int, required=True, metavar="V1", help="answers the rest")
    candidate = start.add_mutually_exclusive_group(required=True)
    candidate.add_argument("--treatment", type=int, metavar="V2", help="answers --split percent")
    candidate.add_argument(
        "--shadow", type=int, metavar="V2", help="sees every input, answers none"
    )
    start.add_argument("--split", type=int, metavar="PERCENT", help="to the treatment, 1 to 99")
    target_flags(start)
    json_flag(start)
    listing = subcommands.add_parser("list", help="experiments, newest first")
    api_flags(listing)
    listing.add_argument("--model", help="only this model's")
    json_flag(listing)
    for name, text in (
        ("status", "each variant's numbers, the test and the verdict"),
        ("promote", "roll out the winner to the experiment's devices"),
        ("stop", "return every device to the control"),
    ):
        one = subcommands.add_parser(name, help=text)
        api_flags(one)
        one.add_argument("id", type=int, metavar="ID")
        json_flag(one)
