"""The flags many `model-registry` commands share, spelled once."""

from __future__ import annotations

import argparse


def home_flag(parser: argparse.ArgumentParser) -> None:
    """--home, for commands that work on a registry home."""
    parser.add_argument(
        "--home", help="registry home (default: $MODEL_REGISTRY_HOME or ./registry-home)"
    )


def api_flags(parser: argparse.ArgumentParser) -> None:
    """--home, --url and --token, for commands that call a registry's API."""
    home_flag(parser)
    parser.add_argument(
        "--url", help="registry API URL (default: $MODEL_REGISTRY_URL or the home's)"
    )
    parser.add_argument("--token", help="API token (default: $MODEL_REGISTRY_TOKEN or the home's)")


def json_flag(parser: argparse.ArgumentParser) -> None:
    """--json, for commands that print a table."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def target_flags(parser: argparse.ArgumentParser) -> None:
    """--group G or --device ID..., the devices a command acts on."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--group", help="every device of this group")
    group.add_argument("--device", nargs="+", metavar="ID", help="these devices")
