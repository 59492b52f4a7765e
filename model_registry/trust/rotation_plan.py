"""Planning a rotation: root N+1 built, signed and checked as a device would check it, and the
files it writes, all before anything is written (`rotation.py` commits a plan, or nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from edge_protocol import (
    Assignment,
    PublicKey,
    RejectedError,
    RoleKeys,
    Root,
    SigningKey,
    TrustedState,
)
from edge_protocol.errors import FormatError
from edge_protocol.metadata import MAX_KEYS
from edge_protocol.trust import Clock
from model_registry.config import RegistryConfig
from model_registry.errors import ConflictError, InvalidInputError
from model_registry.trust.key_files import load_private_key
from model_registry.trust.signing import ROOT_LIFETIME, sign_document

ROOT_KEY_DIR = Path("keys") / "root"
ROOT_METADATA_DIR = Path("metadata") / "root"
RETIRED_DIR = "retired"  # next to the release key: keys/retired/release-{keyid[:12]}.pem
# The device id of the simulated device that checks a new root before it is written.
_CHECK_DEVICE = "key-rotation-check"
PRIVATE = 0o600
PUBLIC = 0o644


@dataclass(frozen=True)
class RotationResult:
    """What a rotation wrote; the CLI tells the operator."""

    home: Path
    previous_version: int
    version: int
    root_file: Path  # root.json, now root `version`
    metadata_file: Path  # metadata/root/{version}.json
    root_threshold: int
    root_signatures: int  # how many keys signed the new root
    release_keyids: tuple[str, ...]
    release_key_file: Path | None = None  # the new release key (release rotation)
    retired_key_file: Path | None = None  # the previous release key, kept (release rotation)
    new_root_key_files: tuple[Path, ...] = ()  # root rotation: move these offline


@dataclass(frozen=True)
class Current:
    version: int
    envelope: bytes
    root: Root


@dataclass
class Plan:
    """Everything a rotation writes, computed and verified before the first write."""

    version: int
    root_bytes: bytes
    result: RotationResult
    directories: list[Path] = field(default_factory=list)  # created 0700 when missing
    new_files: list[tuple[Path, bytes, int]] = field(default_factory=list)  # must not exist
    replaced_files: list[tuple[Path, bytes, int]] = field(default_factory=list)


def plan_release_rotation(
    config: RegistryConfig,
    current: Current,
    *,
    root_key_files: Sequence[Path] | None,
    passphrase: bytes | None,
    clock: Clock,
) -> Plan:
    signers = _root_signers(config.home, current.root, root_key_files, passphrase)
    key_path = config.path(config.signing.release_key)
    old_pem = read_or_empty(key_path)
    try:
        old_key = SigningKey.from_pem(old_pem)
    except FormatError as e:
        raise ConflictError(f"cannot read the current release key {key_path}: {e}") from e
    new_key = SigningKey.generate()
    root_role = current.root.roles["root"]
    root = _next_root(
        current.root,
        clock,
        root_keys={k: current.root.keys[k] for k in root_role.keyids},
        root_role=root_role,
        release_keys={new_key.keyid: new_key.public_key},
        release_role=RoleKeys((new_key.keyid,), 1),
    )
    root_bytes = sign_document(root.to_dict(), signers)
    _check_as_a_device(current, root_bytes, new_key, clock)
    retired = key_path.parent / RETIRED_DIR / f"release-{old_key.keyid[:12]}.pem"
    result = _result(
        config, current.version, root.version, root_threshold=root_role.threshold,
        root_signatures=len(signers), release_keyids=(new_key.keyid,),
        release_key_file=key_path, retired_key_file=retired,
    )  # fmt: skip
    metadata_file, root_file = result.metadata_file, result.root_file
    return Plan(
        version=root.version,
        root_bytes=root_bytes,
        result=result,
        directories=[retired.parent],
        new_files=[(retired, old_pem, PRIVATE), (metadata_file, root_bytes, PUBLIC)],
        replaced_files=[(key_path, new_key.to_pem(), PRIVATE), (root_file, root_bytes, PUBLIC)],
    )


def plan_root_rotation(
    config: RegistryConfig,
    current: Current,
    *,
    root_key_files: Sequence[Path] | None,
    new_root_keys: int | None,
    new_threshold: int | None,
    passphrase: bytes | None,
    clock: Clock,
) -> Plan:
    old_role = current.root.roles["root"]
    release_role = current.root.roles["release"]
    count = len(old_role.keyids) if new_root_keys is None else new_root_keys
    threshold = min(old_role.threshold, count) if new_threshold is None else new_threshold
    if not 1 <= count <= MAX_KEYS - len(release_role.keyids):
        raise InvalidInputError(
            f"the number of new root keys must be between 1 and "
            f"{MAX_KEYS - len(release_role.keyids)}, not {count}"
        )
    if not 1 <= threshold <= count:
        raise InvalidInputError(
            f"the new root threshold {threshold} must be between 1 and the {count} new root key(s)"
        )
    old_signers = _root_signers(config.home, current.root, root_key_files, passphrase)
    key_path = config.path(config.signing.release_key)
    try:
        release_key = load_private_key(key_path)
    except FormatError as e:
        raise ConflictError(f"cannot read the release key {key_path}: {e}") from e
    new_keys = [SigningKey.generate() for _ in range(count)]
    root = _next_root(
        current.root,
        clock,
        root_keys={k.keyid: k.public_key for k in new_keys},
        root_role=RoleKeys(tuple(k.keyid for k in new_keys), threshold),
        release_keys={k: current.root.keys[k] for k in release_role.keyids},
        release_role=release_role,
    )
    # Old keys for the first half of the chain rule, every new one for the second.
    root_bytes = sign_document(root.to_dict(), [*old_signers, *new_keys])
    _check_as_a_device(current, root_bytes, release_key, clock)
    key_dir = config.home / ROOT_KEY_DIR
    key_files = tuple(key_dir / f"root-{root.version}-{i + 1}.pem" for i in range(count))
    for path in key_files:
        if path.exists():
            raise ConflictError(f"{path} already exists; refusing to overwrite a key")
    result = _result(
        config, current.version, root.version, root_threshold=threshold,
        root_signatures=len(old_signers) + count, release_keyids=release_role.keyids,
        new_root_key_files=key_files,
    )  # fmt: skip
    metadata_file, root_file = result.metadata_file, result.root_file
    new_files = [
        (path, key.to_pem(passphrase), PRIVATE)
        for path, key in zip(key_files, new_keys, strict=True)
    ]
    return Plan(
        version=root.version,
        root_bytes=root_bytes,
        result=result,
        directories=[key_dir],
        new_files=[*new_files, (metadata_file, root_bytes, PUBLIC)],
        replaced_files=[(root_file, root_bytes, PUBLIC)],
    )


def _result(
    config: RegistryConfig, previous_version: int, version: int, **details: Any
) -> RotationResult:
    """What rotating to root `version` writes: root.json, its metadata copy, and `details`."""
    return RotationResult(
        home=config.home,
        previous_version=previous_version,
        version=version,
        root_file=config.path(config.signing.root_file),
        metadata_file=config.home / ROOT_METADATA_DIR / f"{version}.json",
        **details,
    )


def _root_signers(
    home: Path, root: Root, files: Sequence[Path] | None, passphrase: bytes | None
) -> list[SigningKey]:
    """Load root keys of `root`'s root role, at least its threshold of them, or refuse.

    Explicit files must all be keys of that role; from the default keys/root/*.pem, keys of
    older roots are skipped.
    """
    role = root.roles["root"]
    explicit = files is not None
    if files is None:
        files = sorted((home / ROOT_KEY_DIR).glob("*.pem"))
        if not files:
            raise InvalidInputError(
                f"no root key files in {home / ROOT_KEY_DIR}; give them with --root-key "
                "(root keys live offline)"
            )
    signers: dict[str, SigningKey] = {}
    for path in files:
        try:
            key = load_private_key(Path(path), passphrase)
        except FormatError as e:
            hint = "" if passphrase else " (an encrypted key needs --passphrase-env)"
            raise InvalidInputError(f"{e}{hint}") from e
        if key.keyid in role.keyids:
            signers[key.keyid] = key
        elif explicit:
            raise InvalidInputError(f"{path} is not one of the root keys of root v{root.version}")
    if len(signers) < role.threshold:
        raise InvalidInputError(
            f"root v{root.version} requires signatures by {role.threshold} of its "
            f"{len(role.keyids)} root keys; the key files given hold {len(signers)}"
        )
    return list(signers.values())


def _next_root(
    current: Root,
    clock: Clock,
    *,
    root_keys: dict[str, PublicKey],
    root_role: RoleKeys,
    release_keys: dict[str, PublicKey],
    release_role: RoleKeys,
) -> Root:
    # Roles this registry does not know (a newer one's) are carried over with their keys.
    other_roles = {n: r for n, r in current.roles.items() if n not in ("root", "release")}
    keys = {**root_keys, **release_keys}
    for role in other_roles.values():
        keys.update({k: current.keys[k] for k in role.keyids})
    return replace(
        current,
        version=current.version + 1,
        expires=clock().replace(microsecond=0) + ROOT_LIFETIME,
        keys=keys,
        roles={"root": root_role, "release": release_role, **other_roles},
    )


def _check_as_a_device(
    current: Current, root_bytes: bytes, release_key: SigningKey, clock: Clock
) -> None:
    """Refuse unless a device trusting root N accepts the new root and the release key's
    documents under it: the chain rule, exactly as devices apply it."""
    try:
        device = TrustedState(current.envelope, device_id=_CHECK_DEVICE, clock=clock)
        device.update_root(root_bytes)
        now = clock().replace(microsecond=0)
        probe = Assignment(
            device_id=_CHECK_DEVICE, seq=1, created=now, expires=now + timedelta(hours=1), models={}
        )
        device.verify_assignment(sign_document(probe.to_dict(), [release_key]))
    except RejectedError as e:
        raise ConflictError(
            f"refusing to write root v{current.version + 1}: a device trusting root "
            f"v{current.version} would refuse it or its release key ({e})"
        ) from e


def read_or_empty(path: Path) -> bytes:
    """A file's bytes, or nothing when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
