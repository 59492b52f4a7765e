"""Print the agent's Python requirements for the arm64 check, one per line.

They are read from pyproject.toml (the base dependencies plus the `agent` extra), so the check
installs what a device installs. onnxruntime is pinned (default 1.19.2): newer releases crash in
their native initialisation under qemu-user 7.2 (Debian 12's), 1.19.2 runs there, and the
agent supports onnxruntime >= 1.19.

Usage: python scripts/arm64/requirements.py [--onnxruntime VERSION] [pyproject.toml]
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

DEFAULT_ONNXRUNTIME = "1.19.2"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def requirement_name(requirement: str) -> str:
    """The normalised project name at the start of a requirement string."""
    match = _NAME.match(requirement.strip())
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def agent_requirements(pyproject: Path, onnxruntime: str) -> list[str]:
    """Base dependencies and the agent extra, onnxruntime pinned to `onnxruntime`."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    listed = [*project["dependencies"], *project["optional-dependencies"]["agent"]]
    pinned = [
        f"onnxruntime=={onnxruntime}" if requirement_name(r) == "onnxruntime" else r for r in listed
    ]
    if not any(requirement_name(r) == "onnxruntime" for r in listed):
        raise SystemExit("pyproject.toml: the agent extra no longer lists onnxruntime")
    return pinned


def main() -> None:
    """Print the requirements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", nargs="?", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--onnxruntime", default=DEFAULT_ONNXRUNTIME, metavar="VERSION")
    args = parser.parse_args()
    print("\n".join(agent_requirements(args.pyproject, args.onnxruntime)))


if __name__ == "__main__":
    main()
