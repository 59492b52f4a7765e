"""The files a test mosquitto reads: its config, password file and ACL.

The password hashes and the access rules are the product's (`model_registry.mqtt.credentials`,
`model_registry.mqtt.acl`): the brokers the tests start grant exactly what the shipped broker
configuration grants, so a test passes against the ACL devices meet in the field, not a copy.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable, Mapping
from pathlib import Path

from edge_protocol import Topics
from model_registry.mqtt.acl import USERNAME, pattern_rules, registry_rules, shared_rules
from model_registry.mqtt.credentials import hash_password

REGISTRY_USER = "registry"


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """Write a mosquitto password file of `$7$` hashes, as the registry makes them."""
    lines = "".join(f"{user}:{hash_password(password)}\n" for user, password in users.items())
    path.write_text(lines, encoding="utf-8")
    return path


def write_config(directory: Path, text: str, name: str = "mosquitto.conf") -> Path:
    """Write a mosquitto config file into `directory` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def common_settings() -> str:
    """Config lines every generated test broker shares."""
    # mosquitto started as root drops to the `mosquitto` user, which cannot read pytest's
    # 0700 tmp dirs; naming the current user keeps it as is (ignored when not root).
    return (
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
        "per_listener_settings false\n"
        "persistence false\n"
        # Without it Nagle's algorithm meets delayed ACKs and back-to-back packets
        # (SUBACK then a retained PUBLISH) arrive ~40 ms apart, slowing every test.
        "set_tcp_nodelay true\n"
        "log_dest stderr\n"
        "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        "log_type subscribe\nlog_type unsubscribe\n"
        "connection_messages true\n"
        "log_timestamp_format %Y-%m-%dT%H:%M:%S\n"
    )


def plain_config(host: str, port: int) -> str:
    """Config for an anonymous plain-TCP listener."""
    return f"{common_settings()}listener {port} {host}\nallow_anonymous true\n"


def auth_settings(password_file: Path, acl_file: Path) -> str:
    """Config lines that require a username/password and enforce the ACL file."""
    return f"allow_anonymous false\npassword_file {password_file}\nacl_file {acl_file}\n"


def tls_listener(
    host: str, port: int, ca_file: Path, cert_file: Path, key_file: Path, *, require_cert: bool
) -> str:
    """Config lines for a TLS listener using the given CA and server key pair."""
    return (
        f"listener {port} {host}\n"
        f"cafile {ca_file}\ncertfile {cert_file}\nkeyfile {key_file}\n"
        f"require_certificate {'true' if require_cert else 'false'}\n"
    )


def edge_acl(usernames: Iterable[str], topics: Topics | None = None) -> str:
    """ACL text of the product's rule table: the registry user, and every other user a device.

    The rules naming `%u` become mosquitto `pattern` lines; the shared documents are granted
    per user, because mosquitto warns about patterns that hold neither %u nor %c.
    """
    topics = topics or Topics()
    patterns = [f"pattern {r.access} {r.pattern}" for r in pattern_rules(topics)
                if USERNAME in r.pattern]  # fmt: skip
    sections = ["\n".join(patterns)]
    registry = [f"topic {r.access} {r.pattern}" for r in registry_rules(topics)]
    sections.append("\n".join([f"user {REGISTRY_USER}", *registry]))
    shared = [f"topic {r.access} {r.pattern}" for r in shared_rules(topics)]
    for device in usernames:
        if device != REGISTRY_USER:
            sections.append("\n".join([f"user {device}", *shared]))
    return "\n\n".join(sections) + "\n"


def write_auth_files(workdir: Path, users: Mapping[str, str]) -> tuple[Path, Path]:
    """Write the password and ACL files; return (password_file, acl_file)."""
    password_file = write_password_file(workdir / "passwd", users)
    acl_file = workdir / "acl"
    acl_file.write_text(edge_acl(users), encoding="utf-8")
    return password_file, acl_file
