"""`model-registry init`: the home, its keys, root v1, database and admin token."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from edge_protocol import Envelope, Root, TrustedState
from model_registry.config import load_config
from model_registry.errors import ConfigError, ConflictError, InvalidInputError
from model_registry.home import InitResult, init_home
from model_registry.trust.key_files import load_private_key


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_a_complete_home(registry_home: InitResult) -> None:
    home = registry_home.home
    config = load_config(home)
    assert config.mqtt.url == "embedded"
    assert (home / "registry.db").exists()
    assert (home / "blobs").is_dir()
    assert _mode(home / "keys" / "release.pem") == 0o600
    assert _mode(home / "secrets") == 0o700
    assert _mode(home / "secrets" / "mqtt-password") == 0o600
    assert all(_mode(p) == 0o600 for p in registry_home.root_key_files)
    release_key = load_private_key(home / "keys" / "release.pem")
    root = Root.from_dict(Envelope.from_bytes(registry_home.root_file.read_bytes()).signed)
    assert root.version == 1
    assert root.roles["release"].keyids == (release_key.keyid,)
    # The provisioning file is a valid trust anchor for a device.
    TrustedState(registry_home.root_file.read_bytes(), device_id="any")


def test_admin_token_is_stored_hashed_only(registry_home: InitResult) -> None:
    database = registry_home.home / "registry.db"
    with sqlite3.connect(database) as conn:
        dump = "\n".join(conn.iterdump())
    assert registry_home.admin_token not in dump
    assert registry_home.admin_token not in (registry_home.home / "registry.toml").read_text()


async def test_init_refuses_an_existing_home(registry_home: InitResult) -> None:
    before = (registry_home.home / "keys" / "release.pem").read_bytes()
    with pytest.raises(ConflictError, match="refusing to overwrite"):
        await init_home(registry_home.home)
    assert (registry_home.home / "keys" / "release.pem").read_bytes() == before


async def test_root_threshold_and_passphrase(tmp_path: Path) -> None:
    result = await init_home(tmp_path / "h", root_keys=3, root_threshold=2, passphrase=b"pw")
    root = Root.from_dict(Envelope.from_bytes(result.root_file.read_bytes()).signed)
    assert root.roles["root"].threshold == 2
    assert len(root.roles["root"].keyids) == 3
    assert len(Envelope.from_bytes(result.root_file.read_bytes()).signatures) == 3
    assert load_private_key(result.root_key_files[0], b"pw")
    with pytest.raises(InvalidInputError):
        await init_home(tmp_path / "h2", root_keys=1, root_threshold=2)


@pytest.mark.parametrize(
    ("toml", "complaint"),
    [
        ("[api]\nlisten = 8700\n", "api.listen must be a string"),
        ("[api]\nlisten = 'nowhere'\n", "api.listen"),
        ("[mqtt]\nurl = 'http://x'\n", "mqtt.url"),
        ("[mqtt]\nurl = 'mqtt://registry:hunter2@broker'\n", "must not carry credentials"),
        ("[mqtt]\ndevice_url = 'mqtt://broker:99999'\n", "mqtt.device_url .* bad port"),
        ("[mqtt]\nbroker = 'x'\n", "unknown key mqtt.broker"),
        ("[storage]\ndatabase = true\n", "storage.database must be a string"),
        ("[signing]\nrelease_expiry_days = '30'\n", "release_expiry_days must be an integer"),
        ("[nonsense]\n", "unknown section \\[nonsense\\]$"),
        (
            "[api]\nmax_uplod_mb = 1\n",
            "unknown key api.max_uplod_mb; did you mean api.max_upload_mb\\?",
        ),
        ("[flet]\n", "unknown section \\[flet\\]; did you mean \\[fleet\\]\\?"),
        ("[api\n", "registry.toml"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, toml: str, complaint: str) -> None:
    (tmp_path / "registry.toml").write_text(toml)
    with pytest.raises(ConfigError, match=complaint) as caught:
        load_config(tmp_path)
    assert "registry.toml" in str(caught.value)


def test_a_config_that_is_not_a_small_text_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "registry.toml").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match=r"registry\.toml: it is larger than 1048576 bytes"):
        load_config(tmp_path)
    (tmp_path / "registry.toml").unlink()
    (tmp_path / "registry.toml").write_bytes(b"[api]\nlisten = '\xff\xfe'\n")
    with pytest.raises(ConfigError, match=r"registry\.toml: not valid TOML"):
        load_config(tmp_path)


def test_a_credential_in_the_broker_url_is_never_echoed(tmp_path: Path) -> None:
    (tmp_path / "registry.toml").write_text("[mqtt]\nurl = 'mqtts://registry:hunter2@broker'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert "hunter2" not in str(caught.value)
