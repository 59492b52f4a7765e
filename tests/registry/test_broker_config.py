"""`write_broker_config`: the files, and a real mosquitto 2 running on exactly those files.

The access checks cover what docs/protocol.md section 7 promises: a device reads the shared
documents and its own assignment, writes only its own reports; the registry reads and writes the
prefix; anonymous clients are refused. `is_allowed` (the embedded broker's evaluator) is checked
against mosquitto's verdicts on the same table, so both brokers enforce the same rules. Devices
connect with their device id as client id, as the agent does; any other id is refused
(tests/registry/test_broker_security.py).
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from model_registry.errors import ConflictError, InvalidInputError
from model_registry.mqtt.credentials import hash_password, pbkdf2_fields
from model_registry.mqtt.limits import MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES
from tests.registry.generated_broker import (
    DEV,
    ME,
    REGISTRY,
    dynsec_plugin,
    provision,
    write,
)
from tests.support.broker import (
    LOCALHOST,
)

# --- the files -------------------------------------------------------------------------------


def test_writes_config_and_dynamic_security_with_private_modes(tmp_path: Path) -> None:
    users = provision((DEV,))
    files = write(tmp_path / "out", users)

    assert files.ca_cert is None
    assert files.server_key is None
    assert all(path.is_absolute() for path in (files.config, files.dynsec_file))
    assert files.dynsec_file.parent == files.persistence_dir  # mosquitto rewrites it there
    assert stat.S_IMODE(files.dynsec_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.persistence_dir.stat().st_mode) == 0o700
    security = json.loads(files.dynsec_file.read_text())
    clients = {client["username"]: client for client in security["clients"]}
    assert set(clients) == {REGISTRY, DEV}
    assert clients[DEV]["clientid"] == DEV  # bound: no other client id may log in as dev-a
    assert "clientid" not in clients[REGISTRY]
    assert security["defaultACLAccess"] == {
        "publishClientSend": False, "publishClientReceive": False,
        "subscribe": False, "unsubscribe": True,
    }  # fmt: skip
    settings = _settings(files.config)
    assert settings["allow_anonymous"] == "false"
    assert settings["per_listener_settings"] == "false"
    assert settings["plugin"] == str(dynsec_plugin())
    assert settings["plugin_opt_config_file"] == str(files.dynsec_file)
    assert "password_file" not in settings
    assert "acl_file" not in settings
    assert settings["message_size_limit"] == str(MAX_PAYLOAD_BYTES)
    assert settings["max_packet_size"] == str(MAX_PACKET_BYTES)
    assert settings["persistence"] == "true"
    assert settings["listener"] == f"18830 {LOCALHOST}"
    assert settings["user"] == ME


def test_the_dynamic_security_file_keeps_the_stored_hashes(tmp_path: Path) -> None:
    users = provision((DEV,))
    stored = hash_password(users[DEV])
    files = write(tmp_path, users, devices=[(DEV, stored)])

    (entry,) = [
        c for c in json.loads(files.dynsec_file.read_text())["clients"] if c["username"] == DEV
    ]
    iterations, salt, digest = pbkdf2_fields(stored)
    assert (entry["iterations"], entry["salt"], entry["password"]) == (
        iterations, _b64(salt), _b64(digest),
    )  # fmt: skip


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_tls_files_are_a_ca_and_a_server_certificate_for_the_hosts(tmp_path: Path) -> None:
    files = write(tmp_path, provision(()), tls=True, tls_hosts=("broker.example", "10.0.0.7"))
    assert files.ca_cert
    assert files.ca_key
    assert files.server_cert
    assert files.server_key

    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    settings = _settings(files.config)
    assert (settings["cafile"], settings["certfile"], settings["keyfile"]) == (
        str(files.ca_cert),
        str(files.server_cert),
        str(files.server_key),
    )
    assert settings["tls_version"] == "tlsv1.2"
    assert "offline" in files.config.read_text()  # the CA key's advice


def test_as_root_the_account_mosquitto_runs_as_gets_what_it_reads_and_writes(
    tmp_path: Path,
) -> None:
    account = pwd.getpwnam("nobody")
    files = write(tmp_path, provision((DEV,)), tls=True, run_as_user="nobody")
    assert files.ca_key is not None
    assert files.server_key is not None

    owners = {path: path.stat().st_uid for path in (files.persistence_dir, files.dynsec_file,
              files.server_key, files.ca_key)}  # fmt: skip
    # Only root can give files away; anyone else keeps them (and runs mosquitto as itself).
    expected = account.pw_uid if os.geteuid() == 0 else os.geteuid()
    assert owners[files.persistence_dir] == owners[files.dynsec_file] == expected
    assert owners[files.server_key] == expected
    assert owners[files.ca_key] == os.geteuid()  # the CA key is not mosquitto's business


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    users = provision((DEV,))
    first = write(tmp_path, users)
    before = {path: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}

    with pytest.raises(ConflictError, match=r"mosquitto\.conf"):
        write(tmp_path, users, port=18831, tls=True)
    assert {path: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before

    write(tmp_path, users, port=18831, tls=True, overwrite=True)
    assert _settings(first.config)["listener"] == f"18831 {LOCALHOST}"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"devices": [("dev a", hash_password("x"))]}, "must be a valid name"),
        ({"devices": [(REGISTRY, hash_password("x"))]}, "appears twice"),
        ({"devices": [(DEV, hash_password("x"))] * 2}, "appears twice"),
        ({"devices": [(DEV, "plaintext")]}, "not a \\$7\\$"),
        ({"devices": [(DEV, hash_password("x") + "\nintruder:x")]}, "bad base64"),
        ({"devices": [(DEV, hash_password("x") + "\n")]}, "bad base64"),
        ({"devices": [(DEV, "$6$c2FsdA==$ZGlnZXN0")]}, "not a \\$7\\$"),
        ({"devices": [(DEV, "$7$101$c2FsdA==$ZGlnZXN0")]}, "wrong salt or digest length"),
        ({"registry_user": "reg/istry"}, "must be a valid name"),
        ({"devices": [("dev\n", hash_password("x"))]}, "must be a valid name"),
        ({"dynsec_plugin": Path("relative/plugin.so")}, "must be an absolute path"),
        (
            {"dynsec_plugin": Path("/usr/lib/x.so\nallow_anonymous true")},
            "must be an absolute path",
        ),
        ({"port": 0}, "port"),
        ({"listen_host": "0.0.0.0\nallow_anonymous true"}, "listen host"),
        ({"run_as_user": "root\nallow_anonymous true"}, "user"),
        ({"tls": True, "tls_hosts": ()}, "at least one host"),
        ({"tls": True, "tls_hosts": ("bad host",)}, "neither a host name"),
    ],
)
def test_refuses_bad_input_before_writing_anything(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        write(tmp_path / "out", provision(()), **change)
    assert not (tmp_path / "out").exists()


def _settings(config: Path) -> dict[str, str]:
    """Option -> value of a mosquitto.conf, comments skipped (last one wins)."""
    pairs = (line.split(" ", 1) for line in config.read_text().splitlines())
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2 and not pair[0].startswith("#")}
