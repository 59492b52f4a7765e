"""The `model-registry` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from model_registry import __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `model-registry`."""
    parser = argparse.ArgumentParser(
        prog="model-registry",
        description=(
            "Version, quantize, sign and deploy ONNX models to a fleet of edge devices over MQTT."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `model-registry`."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0
