"""Key rotation: root N+1 follows the chain rule, refusals change nothing, serve re-signs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_protocol import (
    Assignment,
    Envelope,
    Release,
    Root,
    SigningKey,
    TrustedState,
    utc_now,
)
from edge_protocol.errors import KeyFormatError, SignatureThresholdError
from model_registry.config import load_config
from model_registry.errors import ConflictError, InvalidInputError
from model_registry.home import init_home
from model_registry.server import make_context
from model_registry.services.context import RegistryContext
from model_registry.services.deployments import Target, deploy
from model_registry.services.devices import add_device
from model_registry.services.maintenance import (
    renew_retired_signatures,
    run_maintenance,
    sync_broker,
)
from model_registry.services.releases import PushRequest, push_model
from model_registry.storage import open_storage
from model_registry.storage.sqlite import SQLiteStorage
from model_registry.trust.key_files import load_private_key
from model_registry.trust.rotation import rotate_release_key, rotate_root_keys
from model_registry.trust.signing import sign_document
from tests.support.models import ModelSet
from tests.support.registry import cli

DEVICE = "dev-1"


def _root(data: bytes) -> Root:
    return Root.from_dict(Envelope.from_bytes(data).signed)


def _assignment(key: SigningKey, seq: int) -> bytes:
    now = utc_now().replace(microsecond=0)
    doc = Assignment(
        device_id=DEVICE, seq=seq, created=now, expires=now + timedelta(days=1), models={}
    )
    return sign_document(doc.to_dict(), [key])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(home: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path of the home with its mode and content (the database is compared apart)."""
    return {
        str(path.relative_to(home)): (_mode(path), path.read_bytes() if path.is_file() else None)
        for path in sorted(home.rglob("*"))
        if not path.name.startswith("registry.db")
    }


async def _stored_roots(home: Path) -> list[tuple[int, bytes]]:
    storage = open_storage(load_config(home).database_location)
    await storage.open()
    try:
        return await storage.roots()
    finally:
        await storage.close()


async def test_rotate_release_gives_a_root_devices_follow_to_the_new_key(tmp_path: Path) -> None:
    home = (await init_home(tmp_path / "home")).home
    v1 = (home / "root.json").read_bytes()
    old_pem = (home / "keys" / "release.pem").read_bytes()
    old_key = load_private_key(home / "keys" / "release.pem")
    device = TrustedState(v1, device_id=DEVICE)
    device.verify_assignment(_assignment(old_key, 1))

    result = await rotate_release_key(home)

    new_key = load_private_key(home / "keys" / "release.pem")
    v2 = (home / "root.json").read_bytes()
    assert (result.previous_version, result.version) == (1, 2)
    assert (home / "metadata" / "root" / "2.json").read_bytes() == v2
    assert await _stored_roots(home) == [(1, v1), (2, v2)]
    root = device.update_root(v2)
    assert root.roles["release"].keyids == (new_key.keyid,)
    assert root.roles["root"] == _root(v1).roles["root"], "root keys and threshold unchanged"
    assert new_key.keyid != old_key.keyid
    assert _mode(home / "keys" / "release.pem") == 0o600
    retired = home / "keys" / "retired" / f"release-{old_key.keyid[:12]}.pem"
    assert result.retired_key_file == retired
    assert retired.read_bytes() == old_pem
    assert (_mode(retired), _mode(retired.parent)) == (0o600, 0o700)

    # A device that accepted root v2 refuses the retired key and accepts the new one.
    with pytest.raises(SignatureThresholdError):
        device.verify_assignment(_assignment(old_key, 2))
    device.verify_assignment(_assignment(new_key, 2))


async def test_rotate_release_with_a_threshold_of_encrypted_root_keys(tmp_path: Path) -> None:
    init = await init_home(tmp_path / "home", root_keys=3, root_threshold=2, passphrase=b"pw")
    device = TrustedState(init.root_file.read_bytes(), device_id=DEVICE)
    chosen = [init.root_key_files[0], init.root_key_files[2]]

    result = await rotate_release_key(init.home, root_key_files=chosen, passphrase=b"pw")

    new = init.root_file.read_bytes()
    assert result.root_signatures == 2
    assert len(Envelope.from_bytes(new).signatures) == 2
    device.update_root(new)
    assert device.root.roles["root"].threshold == 2


def _fail_adding_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: SQLiteStorage, version: int, envelope: bytes) -> None:
        raise OSError(28, "No space left on device", "registry.db")

    monkeypatch.setattr(SQLiteStorage, "add_root", broken)


REFUSALS: dict[str, tuple[type[Exception], str]] = {
    "wrong passphrase": (InvalidInputError, "cannot load private key"),
    "no passphrase": (InvalidInputError, "needs --passphrase-env"),
    "below threshold": (InvalidInputError, "requires signatures by 2 of its 3 root keys"),
    "not a root key": (InvalidInputError, "is not one of the root keys of root v1"),
    "serve running": (ConflictError, "holds the current release key in memory"),
    "database fails": (OSError, "No space left"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_refused_release_rotation_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    init = await init_home(tmp_path / "home", root_keys=3, root_threshold=2, passphrase=b"pw")
    home, keys = init.home, init.root_key_files
    kwargs: dict[str, Any] = {"root_key_files": keys[:2], "passphrase": b"pw"}
    if case == "wrong passphrase":
        kwargs["passphrase"] = b"not it"
    elif case == "no passphrase":
        kwargs["passphrase"] = None
    elif case == "below threshold":
        kwargs["root_key_files"] = keys[:1]
    elif case == "not a root key":
        other = SigningKey.generate()
        (tmp_path / "other.pem").write_bytes(other.to_pem(b"pw"))
        kwargs["root_key_files"] = [*keys[:2], tmp_path / "other.pem"]
    elif case == "serve running":
        pid = {"api_url": "http://127.0.0.1:1", "mqtt_url": None, "pid": os.getpid()}
        (home / "serve.json").write_text(json.dumps(pid))
    elif case == "database fails":
        _fail_adding_roots(monkeypatch)
    before, roots_before = _snapshot(home), await _stored_roots(home)

    error, message = REFUSALS[case]
    with pytest.raises(error, match=message):
        await rotate_release_key(home, **kwargs)

    assert _snapshot(home) == before
    assert await _stored_roots(home) == roots_before


async def test_a_serve_that_died_does_not_block_a_rotation(tmp_path: Path) -> None:
    home = (await init_home(tmp_path / "home")).home
    (home / "serve.json").write_text(json.dumps({"pid": 2**22 + 12345}))  # above pid_max
    assert (await rotate_release_key(home)).version == 2


async def test_rotate_root_chain_v1_v2_v3(tmp_path: Path) -> None:
    init = await init_home(tmp_path / "home", root_keys=3, root_threshold=2, passphrase=b"pw")
    home = init.home
    release_key = load_private_key(home / "keys" / "release.pem")
    v1 = init.root_file.read_bytes()
    device = TrustedState(v1, device_id=DEVICE)
    late = TrustedState(v1, device_id=DEVICE)  # offline through both rotations

    first = await rotate_root_keys(
        home,
        root_key_files=[init.root_key_files[1], init.root_key_files[2]],
        new_root_keys=2,
        new_threshold=2,
        passphrase=b"pw",
    )
    v2 = init.root_file.read_bytes()
    assert first.new_root_key_files == (
        home / "keys" / "root" / "root-2-1.pem",
        home / "keys" / "root" / "root-2-2.pem",
    )
    new_keys = [load_private_key(p, b"pw") for p in first.new_root_key_files]
    assert all(_mode(p) == 0o600 for p in first.new_root_key_files)
    with pytest.raises(KeyFormatError):
        load_private_key(first.new_root_key_files[0])  # encrypted like the old ones
    root = device.update_root(v2)
    assert root.roles["root"].keyids == tuple(k.keyid for k in new_keys)
    assert root.roles["root"].threshold == 2
    assert root.roles["release"] == _root(v1).roles["release"], "release role unchanged"
    # Old threshold (2 of 3) and new threshold (2 of 2): four signatures.
    assert len(Envelope.from_bytes(v2).signatures) == 4

    # The old root keys cannot sign for root v2 any more.
    with pytest.raises(InvalidInputError, match="is not one of the root keys of root v2"):
        await rotate_root_keys(home, root_key_files=init.root_key_files[:2], passphrase=b"pw")
    with pytest.raises(InvalidInputError, match="requires signatures by 2 of its 2"):
        await rotate_root_keys(home, root_key_files=first.new_root_key_files[:1], passphrase=b"pw")

    second = await rotate_root_keys(
        home, root_key_files=list(first.new_root_key_files), new_root_keys=1, passphrase=b"pw"
    )
    v3 = init.root_file.read_bytes()
    assert second.root_threshold == 1, "defaults to the old threshold, at most the new count"
    assert device.update_root(v3).roles["root"].threshold == 1
    assert [v for v, _ in await _stored_roots(home)] == [1, 2, 3]
    assert (home / "metadata" / "root" / "3.json").read_bytes() == v3

    # A device that missed v2 cannot skip to v3 (v1's keys did not sign it); in order, it can.
    with pytest.raises(SignatureThresholdError):
        late.update_root(v3)
    late.update_root(v2)
    late.update_root(v3)
    late.verify_assignment(_assignment(release_key, 1))

    # A root v4 signed by v2's keys alone is refused by a device on v3 (the chain rule).
    forged = sign_document({**_root(v3).to_dict(), "version": 4}, new_keys)
    with pytest.raises(SignatureThresholdError):
        device.update_root(forged)


@pytest.mark.parametrize("case", ["below threshold", "bad threshold", "database fails"])
async def test_a_refused_root_rotation_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    init = await init_home(tmp_path / "home", root_keys=2, root_threshold=2)
    kwargs: dict[str, Any] = {"root_key_files": list(init.root_key_files)}
    expected: tuple[type[Exception], str] = (OSError, "No space left")
    if case == "below threshold":
        kwargs["root_key_files"] = init.root_key_files[:1]
        expected = (InvalidInputError, "requires signatures by 2 of its 2")
    elif case == "bad threshold":
        kwargs.update(new_root_keys=2, new_threshold=3)
        expected = (InvalidInputError, "threshold 3 must be between 1 and the 2")
    else:
        _fail_adding_roots(monkeypatch)
    before, roots_before = _snapshot(init.home), await _stored_roots(init.home)

    with pytest.raises(expected[0], match=expected[1]):
        await rotate_root_keys(init.home, **kwargs)

    assert _snapshot(init.home) == before
    assert await _stored_roots(init.home) == roots_before


async def test_rotate_root_refuses_while_serve_runs(tmp_path: Path) -> None:
    init = await init_home(tmp_path / "home")
    (init.home / "serve.json").write_text(json.dumps({"pid": os.getpid()}))
    with pytest.raises(ConflictError, match=f"pid {os.getpid()}.*publishes roots only"):
        await rotate_root_keys(init.home, root_key_files=list(init.root_key_files))
    assert [v for v, _ in await _stored_roots(init.home)] == [1]


# -- serve after a release-key rotation --------------------------------------------------


@pytest.fixture
async def used_home(tmp_path: Path, onnx_models: ModelSet) -> Path:
    """A home with two releases of `clf`, the first deployed to DEVICE, all by the first key."""
    home = (await init_home(tmp_path / "home")).home
    model = onnx_models.classifier.onnx_path.read_bytes()
    async with _context(home) as ctx:
        used = await push_model(ctx, PushRequest(name="clf", model=model))
        await push_model(ctx, PushRequest(name="clf", model=model, allow_duplicate=True))
        await add_device(ctx, DEVICE, group="lab")
        await deploy(ctx, "clf", used.version, Target(group="lab"), created_by="test")
    return home


@contextlib.asynccontextmanager
async def _context(home: Path) -> AsyncIterator[RegistryContext]:
    """The context `serve` builds from the home (its release key), without MQTT."""
    config = load_config(home)
    storage = open_storage(config.database_location)
    await storage.open()
    try:
        yield make_context(config, storage)
    finally:
        await storage.close()


def _signers(envelope: bytes) -> set[str]:
    return {s.keyid for s in Envelope.from_bytes(envelope).signatures}


async def _device_after_rotation(home: Path) -> TrustedState:
    roots = await _stored_roots(home)
    device = TrustedState(roots[0][1], device_id=DEVICE)
    for _version, envelope in roots[1:]:
        device.update_root(envelope)
    return device


async def test_serve_start_re_signs_what_the_retired_key_signed(used_home: Path) -> None:
    old_key = load_private_key(used_home / "keys" / "release.pem")
    await rotate_release_key(used_home)
    new_key = load_private_key(used_home / "keys" / "release.pem")

    async with _context(used_home) as ctx:
        before = await ctx.storage.get_device(DEVICE)
        await sync_broker(ctx)  # what serve runs at start-up, before it publishes
        device = await ctx.storage.get_device(DEVICE)
        releases = await ctx.storage.releases("clf")
        again = await renew_retired_signatures(ctx)

    assert _signers(before.assignment or b"") == {old_key.keyid}
    assert device.assignment_seq == before.assignment_seq + 1, "renewed with a new seq"
    assert device.assigned == before.assigned
    assert device.assignment is not None
    assert _signers(device.assignment) == {new_key.keyid}
    # Both releases: the assigned one, and the other so a later deploy finds it valid.
    assert [_signers(r.envelope) for r in releases] == [{new_key.keyid}] * 2
    assert again.releases_renewed == again.assignments_renewed == [], "nothing left to do"

    trusted = await _device_after_rotation(used_home)
    assignment = trusted.verify_assignment(device.assignment)
    pinned = assignment.models["clf"]
    release = trusted.verify_release(releases[0].envelope, "clf", pinned)
    assert release == Release.from_dict(Envelope.from_bytes(releases[0].envelope).signed)


async def test_upkeep_renews_in_use_documents_signed_by_a_retired_key(used_home: Path) -> None:
    await rotate_release_key(used_home)
    async with _context(used_home) as ctx:
        report = await run_maintenance(ctx)
        unused = await ctx.storage.get_release("clf", 2)
    assert report.releases_renewed == ["clf/1"]
    assert report.assignments_renewed == [DEVICE]
    assert _signers(unused.envelope) != {ctx.signer.keyid}, "the periodic pass keeps to in-use"


async def test_a_release_key_the_root_does_not_name_re_signs_nothing(used_home: Path) -> None:
    result = await rotate_release_key(used_home)
    assert result.retired_key_file is not None
    # An operator restores keys/release.pem from a backup taken before the rotation.
    shutil.copy(result.retired_key_file, used_home / "keys" / "release.pem")
    async with _context(used_home) as ctx:
        before = await ctx.storage.get_device(DEVICE)
        report = await renew_retired_signatures(ctx)
        upkeep = await run_maintenance(ctx)
        after = await ctx.storage.get_device(DEVICE)
    assert report.releases_renewed == report.assignments_renewed == []
    assert upkeep.releases_renewed == upkeep.assignments_renewed == []
    assert after.assignment == before.assignment


def test_the_commands_as_an_operator_types_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli("init", "--home", str(home), "--root-keys", "2", "--root-threshold", "2")
    rotated = cli("keys", "rotate-release", "--home", str(home))
    assert "Signed root v2" in rotated.stdout
    assert str(home / "keys" / "retired") in rotated.stdout

    missing = cli("keys", "rotate-root", "--home", str(home), check=False)
    assert missing.returncode == 2, "--root-key is required"
    unset = cli(
        "keys", "rotate-release", "--home", str(home), "--passphrase-env", "NO_SUCH_VAR_X",
        check=False,
    )  # fmt: skip
    refused = cli(
        "keys", "rotate-root", "--home", str(home),
        "--root-key", str(home / "keys" / "root" / "root-1.pem"), check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert "requires signatures by 2 of its 2 root keys" in refused.stderr
    assert unset.returncode == 1
    assert "$NO_SUCH_VAR_X is empty or unset" in unset.stderr

    rooted = cli(
        "keys", "rotate-root", "--home", str(home), "--new-root-keys", "1",
        "--root-key", *(str(p) for p in sorted((home / "keys" / "root").glob("*.pem"))),
    )  # fmt: skip
    assert str(home / "keys" / "root" / "root-3-1.pem") in rooted.stdout
    assert "move them offline" in rooted.stdout
