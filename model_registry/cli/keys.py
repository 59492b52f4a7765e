"""`model-registry keys rotate-release` and `keys rotate-root`: new keys through root N+1.

Both work on the home directly (never through the API) and refuse while `serve` runs from it;
the work and its all-or-nothing rules are in `model_registry.trust.rotation`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from model_registry.errors import InvalidInputError
from model_registry.home import resolve_home
from model_registry.trust.rotation import RotationResult, rotate_release_key, rotate_root_keys


def rotate_release(args: argparse.Namespace) -> int:
    """model-registry keys rotate-release."""
    result = asyncio.run(
        rotate_release_key(
            resolve_home(args.home),
            root_key_files=_paths(args.root_key),
            passphrase=_passphrase(args.passphrase_env),
        )
    )
    keyid = result.release_keyids[0]
    print(
        f"Signed root v{result.version} with {result.root_signatures} root key(s) "
        f"(threshold {result.root_threshold}); its release key is {keyid[:12]}..."
    )
    print(f"  new release key:   {result.release_key_file} (0600)")
    print(
        f"  old release key:   {result.retired_key_file} (kept, 0600; devices that follow "
        f"root v{result.version} refuse what it signs)"
    )
    _print_root_files(result)
    print(
        "Start 'model-registry serve': it publishes the new root and re-signs, with the new key,"
        " every release and assignment devices still use."
    )
    return 0


def rotate_root(args: argparse.Namespace) -> int:
    """model-registry keys rotate-root."""
    result = asyncio.run(
        rotate_root_keys(
            resolve_home(args.home),
            root_key_files=_paths(args.root_key),
            new_root_keys=args.new_root_keys,
            new_threshold=args.new_threshold,
            passphrase=_passphrase(args.passphrase_env),
        )
    )
    count = len(result.new_root_key_files)
    print(
        f"Signed root v{result.version} with the old root keys and its {count} new ones "
        f"(threshold {result.root_threshold} of {count}); the release key is unchanged."
    )
    print("New root keys: move them offline now, they are needed to sign the next root:")
    for path in result.new_root_key_files:
        print(f"  {path}")
    _print_root_files(result)
    print(
        "Start 'model-registry serve': it publishes the new root and devices follow it. Keep the "
        f"old root keys safe until every device reports root_version {result.version}."
    )
    return 0


def _print_root_files(result: RotationResult) -> None:
    print(f"  {f'root v{result.version}:':<19}{result.metadata_file}")
    print(f"  provisioning root: {result.root_file} (new devices get v{result.version})")


def _paths(values: list[str] | None) -> list[Path] | None:
    return None if values is None else [Path(v) for v in values]


def _passphrase(variable: str | None) -> bytes | None:
    if not variable:
        return None
    value = os.environ.get(variable)
    if not value:
        raise InvalidInputError(f"${variable} is empty or unset")
    return value.encode()
