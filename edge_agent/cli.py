"""The `edge-agent` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from edge_agent import __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `edge-agent`."""
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description=(
            "Run verified ONNX models on this device: follow signed assignments over MQTT, "
            "install updates atomically, serve Open Inference Protocol v2 locally."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edge-agent`."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0
