"""Key rotation: sign root N+1 naming a new release key or new root keys, all or nothing.

`model-registry keys rotate-release` and `keys rotate-root` end here. Both follow the chain rule
of docs/protocol.md 5.2: root N+1 is signed by a threshold of root N's root keys *and* a
threshold of its own. A rotation is planned and checked entirely in memory (keys loaded, root
signed, the new root run through `edge_protocol.TrustedState` as a device holding root N would)
before anything is written; then the files are written and the root is stored in the database
last. If any step fails, what was already written is put back, so a refused rotation leaves the
home as it was.

Neither rotation runs while `serve` runs from the home: `serve` holds the release key in memory
and publishes roots only when it starts. Its next start publishes root N+1 and re-signs, with the
new release key, what devices still use (`services/maintenance.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from edge_common.files import make_private_dir, write_atomic
from edge_protocol import (
    Assignment,
    Envelope,
    PublicKey,
    RejectedError,
    RoleKeys,
    Root,
    SigningKey,
    TrustedState,
    utc_now,
)
from edge_protocol.errors import FormatError, ProtocolError
from edge_protocol.metadata import MAX_KEYS
from edge_protocol.trust import Clock
from model_registry.config import RegistryConfig, load_config
from model_registry.errors import ConflictError, InvalidInputError, NotFoundError, RegistryError
from model_registry.home import SERVE_FILE
from model_registry.storage import Storage, open_storage
from model_registry.trust.key_files import load_private_key
from model_registry.trust.signing import ROOT_LIFETIME, sign_document

ROOT_KEY_DIR = Path("keys") / "root"
ROOT_METADATA_DIR = Path("metadata") / "root"
RETIRED_DIR = "retired"  # next to the release key: keys/retired/release-{keyid[:12]}.pem
# The device id of the simulated device that checks a new root before it is written.
_CHECK_DEVICE = "key-rotation-check"
_PRIVATE = 0o600
_PUBLIC = 0o644


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


async def rotate_release_key(
    home: Path,
    *,
    root_key_files: Sequence[Path] | None = None,
    passphrase: bytes | None = None,
    clock: Clock = utc_now,
) -> RotationResult:
    """Replace the online release key: sign root N+1 whose release role is a new key only.

    The root keys and threshold stay as they are, so the same signatures satisfy both halves
    of the chain rule. `root_key_files` defaults to the home's keys/root/*.pem.
    """
    config = load_config(home)
    async with _rotation(
        config,
        "it holds the current release key in memory and would go on signing with it",
    ) as (storage, current):
        plan = _plan_release_rotation(
            config, current, root_key_files=root_key_files, passphrase=passphrase, clock=clock
        )
        await _commit(storage, plan)
    return plan.result


async def rotate_root_keys(
    home: Path,
    *,
    root_key_files: Sequence[Path] | None = None,
    new_root_keys: int | None = None,
    new_threshold: int | None = None,
    passphrase: bytes | None = None,
    clock: Clock = utc_now,
) -> RotationResult:
    """Replace the root keys: root N+1 names new ones and is signed by old and new alike.

    `new_root_keys` defaults to the number root N lists, `new_threshold` to root N's threshold
    (at most the new number). The release role is unchanged. The new key files are written to
    keys/root/root-{N+1}-{i}.pem, encrypted with `passphrase` when one is given.
    """
    config = load_config(home)
    async with _rotation(
        config, "it publishes roots only when it starts, so stop it while the root changes"
    ) as (storage, current):
        plan = _plan_root_rotation(
            config,
            current,
            root_key_files=root_key_files,
            new_root_keys=new_root_keys,
            new_threshold=new_threshold,
            passphrase=passphrase,
            clock=clock,
        )
        await _commit(storage, plan)
    return plan.result


def running_serve_pid(home: Path) -> int | None:
    """Return the pid of a live `serve` recorded in the home's serve.json, else None."""
    path = home / SERVE_FILE
    unsure = ConflictError(
        f"{path} exists but names no process; if no 'model-registry serve' runs from "
        f"{home}, delete it and try again"
    )
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise unsure from e
    pid = recorded.get("pid") if isinstance(recorded, dict) else None
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise unsure
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a serve that crashed left its file behind
    except PermissionError:
        return pid  # alive, under another user
    return pid


# -- the current state -------------------------------------------------------------------


@dataclass(frozen=True)
class _Current:
    version: int
    envelope: bytes
    root: Root


@contextlib.asynccontextmanager
async def _rotation(
    config: RegistryConfig, why_serve_must_stop: str
) -> AsyncIterator[tuple[Storage, _Current]]:
    """Lock the home against another rotation, refuse while serve runs, open the database."""
    with _home_lock(config.home):
        pid = running_serve_pid(config.home)
        if pid is not None:
            raise ConflictError(
                f"model-registry serve is running from {config.home} (pid {pid}): "
                f"{why_serve_must_stop}; stop it, rotate, then start it again"
            )
        storage = open_storage(config.database_location)
        await storage.open()
        try:
            yield storage, await _current_root(config, storage)
        finally:
            await storage.close()


@contextlib.contextmanager
def _home_lock(home: Path) -> Iterator[None]:
    # A lock on the directory itself: two rotations cannot interleave, and no file is created.
    fd = os.open(home, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise ConflictError(f"another key rotation is running on {home}") from e
        yield
    finally:
        os.close(fd)  # releases the lock


async def _current_root(config: RegistryConfig, storage: Storage) -> _Current:
    roots = await storage.roots()
    if not roots:
        raise NotFoundError(f"{config.home} has no root; was it created with 'init'?")
    version, envelope = roots[-1]
    root_file = config.path(config.signing.root_file)
    if _read(root_file) != envelope:
        raise ConflictError(
            f"{root_file} is not root v{version}, the newest root in the database; the home "
            "is inconsistent (a restore from two different backups?), fix that before rotating"
        )
    following = config.home / ROOT_METADATA_DIR / f"{version + 1}.json"
    if following.exists():
        raise ConflictError(
            f"{following} exists but the database's newest root is v{version}; "
            "the home is inconsistent, fix that before rotating"
        )
    try:
        root = Root.from_dict(Envelope.from_bytes(envelope).signed)
    except ProtocolError as e:
        raise ConflictError(f"the stored root v{version} cannot be read: {e}") from e
    return _Current(version, envelope, root)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


# -- plans ---------------------------------------------------------------------------------


@dataclass
class _Plan:
    """Everything a rotation writes, computed and verified before the first write."""

    version: int
    root_bytes: bytes
    result: RotationResult
    directories: list[Path] = field(default_factory=list)  # created 0700 when missing
    new_files: list[tuple[Path, bytes, int]] = field(default_factory=list)  # must not exist
    replaced_files: list[tuple[Path, bytes, int]] = field(default_factory=list)


def _plan_release_rotation(
    config: RegistryConfig,
    current: _Current,
    *,
    root_key_files: Sequence[Path] | None,
    passphrase: bytes | None,
    clock: Clock,
) -> _Plan:
    signers = _root_signers(config.home, current.root, root_key_files, passphrase)
    key_path = config.path(config.signing.release_key)
    old_pem = _read(key_path)
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
    metadata_file = config.home / ROOT_METADATA_DIR / f"{root.version}.json"
    root_file = config.path(config.signing.root_file)
    return _Plan(
        version=root.version,
        root_bytes=root_bytes,
        result=RotationResult(
            home=config.home,
            previous_version=current.version,
            version=root.version,
            root_file=root_file,
            metadata_file=metadata_file,
            root_threshold=root_role.threshold,
            root_signatures=len(signers),
            release_keyids=(new_key.keyid,),
            release_key_file=key_path,
            retired_key_file=retired,
        ),
        directories=[retired.parent],
        new_files=[(retired, old_pem, _PRIVATE), (metadata_file, root_bytes, _PUBLIC)],
        replaced_files=[(key_path, new_key.to_pem(), _PRIVATE), (root_file, root_bytes, _PUBLIC)],
    )


def _plan_root_rotation(
    config: RegistryConfig,
    current: _Current,
    *,
    root_key_files: Sequence[Path] | None,
    new_root_keys: int | None,
    new_threshold: int | None,
    passphrase: bytes | None,
    clock: Clock,
) -> _Plan:
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
    metadata_file = config.home / ROOT_METADATA_DIR / f"{root.version}.json"
    root_file = config.path(config.signing.root_file)
    new_files = [
        (path, key.to_pem(passphrase), _PRIVATE)
        for path, key in zip(key_files, new_keys, strict=True)
    ]
    return _Plan(
        version=root.version,
        root_bytes=root_bytes,
        result=RotationResult(
            home=config.home,
            previous_version=current.version,
            version=root.version,
            root_file=root_file,
            metadata_file=metadata_file,
            root_threshold=threshold,
            root_signatures=len(old_signers) + count,
            release_keyids=release_role.keyids,
            new_root_key_files=key_files,
        ),
        directories=[key_dir],
        new_files=[*new_files, (metadata_file, root_bytes, _PUBLIC)],
        replaced_files=[(root_file, root_bytes, _PUBLIC)],
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
    current: _Current, root_bytes: bytes, release_key: SigningKey, clock: Clock
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


# -- writing -------------------------------------------------------------------------------


async def _commit(storage: Storage, plan: _Plan) -> None:
    """Write the files, then store the root; on any failure put every file back."""
    undo: list[Callable[[], None]] = []
    try:
        _write_files(plan, undo)
        await storage.add_root(plan.version, plan.root_bytes)
    except BaseException as e:
        failures = _roll_back(undo)
        if failures:
            raise RegistryError(
                f"the rotation failed ({e}) and these files could not be restored, "
                f"fix them by hand: {'; '.join(failures)}"
            ) from e
        raise


def _write_files(plan: _Plan, undo: list[Callable[[], None]]) -> None:
    for directory in plan.directories:
        if not directory.exists():
            make_private_dir(directory)
            undo.append(directory.rmdir)
    for path, data, mode in plan.new_files:
        write_atomic(path, data, mode=mode, exclusive=True)
        undo.append(functools.partial(path.unlink, missing_ok=True))
    for path, data, mode in plan.replaced_files:
        old, old_mode = path.read_bytes(), stat.S_IMODE(path.stat().st_mode)
        write_atomic(path, data, mode=mode)
        undo.append(functools.partial(write_atomic, path, old, mode=old_mode))


def _roll_back(undo: list[Callable[[], None]]) -> list[str]:
    failures = []
    for step in reversed(undo):
        try:
            step()
        except OSError as e:
            failures.append(f"{e.filename}: {e.strerror}")
    return failures
