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
from pathlib import Path

from edge_common.files import make_private_dir, write_atomic
from edge_protocol import (
    Envelope,
    Root,
    utc_now,
)
from edge_protocol.errors import ProtocolError
from edge_protocol.trust import Clock
from model_registry.config import RegistryConfig, load_config
from model_registry.errors import ConflictError, NotFoundError, RegistryError
from model_registry.home import SERVE_FILE
from model_registry.storage import Storage, open_storage
from model_registry.trust.rotation_plan import (
    ROOT_METADATA_DIR,
    Current,
    Plan,
    RotationResult,
    plan_release_rotation,
    plan_root_rotation,
    read_or_empty,
)

__all__ = ["RotationResult", "rotate_release_key", "rotate_root_keys", "running_serve_pid"]


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
        plan = plan_release_rotation(
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
        plan = plan_root_rotation(
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


@contextlib.asynccontextmanager
async def _rotation(
    config: RegistryConfig, why_serve_must_stop: str
) -> AsyncIterator[tuple[Storage, Current]]:
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


async def _current_root(config: RegistryConfig, storage: Storage) -> Current:
    roots = await storage.roots()
    if not roots:
        raise NotFoundError(f"{config.home} has no root; was it created with 'init'?")
    version, envelope = roots[-1]
    root_file = config.path(config.signing.root_file)
    if read_or_empty(root_file) != envelope:
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
    return Current(version, envelope, root)


async def _commit(storage: Storage, plan: Plan) -> None:
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


def _write_files(plan: Plan, undo: list[Callable[[], None]]) -> None:
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
