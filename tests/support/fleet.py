"""A whole deployment for end-to-end tests: mosquitto run from the files `broker-config` writes,
a `model-registry serve` process, device bundles, agents, and a forger holding the registry's
own keys for attacks that must get past the signature check to test the rules behind it."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge_protocol import (
    Artifact,
    AssignedModel,
    Assignment,
    Envelope,
    Release,
    SigningKey,
    Topics,
    utc_now,
)
from model_registry.trust.key_files import load_private_key

from .agent import AgentProcess
from .broker import LOCALHOST, Broker, BrokerFactory, MqttTestClient, free_port
from .registry import RegistryProcess, cli, cli_json

TOPICS = Topics()
BROKER_LINK_WAIT_S = 90.0  # a bound on waiting out paho's reconnection backoff, not a timing claim


@dataclass
class Fleet:
    """Registry, broker and devices of one test module."""

    root: Path
    broker_factory: BrokerFactory
    home: Path = field(init=False)
    broker: Broker = field(init=False)
    registry: RegistryProcess = field(init=False)
    port: int = field(default_factory=free_port)

    def start(
        self,
        chunk_size_kib: int = 256,
        database: str | None = None,
        settings: tuple[tuple[str, str], ...] = (),
        extra_config: str = "",
    ) -> None:
        """init (on `database` if given: a postgresql:// URL), broker-config, mosquitto, serve.

        `settings` are (line, replacement) pairs applied to the registry.toml `init` wrote;
        `extra_config`: tables added to it before it serves.
        """
        self.home = self.root / "home"
        cli("init", "--home", str(self.home), *(("--database", database) if database else ()))
        config = self.home / "registry.toml"
        text = config.read_text().replace(
            "chunk_size_kib = 256", f"chunk_size_kib = {chunk_size_kib}"
        )
        for line, replacement in settings:
            if line not in text:
                raise AssertionError(f"registry.toml has no line {line!r}")
            text = text.replace(line, replacement)
        config.write_text(with_settings(text, extra_config) if extra_config else text)
        self._write_broker_files()
        self.broker = self.broker_factory.from_config(
            self.root / "broker" / "mosquitto.conf", port=self.port
        )
        self.registry = RegistryProcess(
            self.home, ("--mqtt-url", f"mqtt://{LOCALHOST}:{self.port}")
        )
        self.registry.start()

    def stop(self) -> None:
        """Stop the registry (the broker factory stops the broker)."""
        self.registry.stop()

    def _write_broker_files(self) -> None:
        args = ["broker-config", "--home", str(self.home), "--out", str(self.root / "broker")]
        args += ["--port", str(self.port), "--listen-host", LOCALHOST]
        cli(*args)

    def api(self) -> tuple[str, ...]:
        """The CLI arguments that reach this registry."""
        return ("--home", str(self.home))

    def push(self, model: Path, name: str, *extra: str) -> dict[str, Any]:
        """`model-registry push`; return the release."""
        release: dict[str, Any] = cli_json("push", str(model), "--name", name, *extra, *self.api())
        return release

    def deploy(self, name: str, version: int, group: str) -> None:
        """`model-registry deploy NAME VERSION --group G`."""
        self.wait_for_broker_link()
        cli("deploy", name, str(version), "--group", group, *self.api())

    def wait_for_broker_link(self, timeout: float = BROKER_LINK_WAIT_S) -> None:
        """Return once the registry is connected to the broker (again, after a restart).

        While it is not, deploys and provisioning are refused with 503; paho waits up to 30 s
        between its reconnection attempts.
        """
        token = (self.home / "secrets" / "cli-token").read_text().strip()
        request = urllib.request.Request(
            f"http://{LOCALHOST}:{self.registry.port}/v1/devices",
            headers={"Authorization": f"Bearer {token}"},
        )
        deadline = time.monotonic() + timeout
        while True:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - http
                if json.loads(response.read())["registry"]["broker_connected"]:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"the registry did not reconnect to the broker in {timeout} s")
            time.sleep(0.2)

    def provision(self, device_id: str, group: str) -> Path:
        """`devices add` (the running mosquitto gets the login at once); return its config."""
        bundle = self.root / "bundles" / device_id
        self.wait_for_broker_link()
        added = cli(
            "devices", "add", device_id, "--group", group, "--out", str(bundle), *self.api()
        )
        if "broker credentials added on the running broker" not in added.stdout:
            raise AssertionError(f"the broker did not get {device_id}'s login: {added.stderr}")
        return bundle / "device.toml"

    def agent(self, device_id: str, group: str, extra_toml: str = "") -> AgentProcess:
        """Provision a device (appending `extra_toml` to its config); return its agent."""
        config = self.provision(device_id, group)
        if extra_toml:
            config.write_text(with_settings(config.read_text(), extra_toml))
        return AgentProcess(config, self.root / "states" / device_id)

    def registry_client(self) -> MqttTestClient:
        """An MQTT client with the registry's own credentials (to watch and to attack)."""
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv311,
        )  # fmt: skip
        password = (self.home / "secrets" / "mqtt-password").read_text().strip()
        client.username_pw_set("registry", password)
        return MqttTestClient.connect(client, LOCALHOST, self.port, timeout=20)

    def forger(self) -> Forger:
        """Signs documents with this registry's own release key."""
        return Forger(load_private_key(self.home / "keys" / "release.pem"))


@dataclass
class Forger:
    """Builds and signs releases and assignments the way the registry does."""

    release_key: SigningKey

    def sign(self, signed: dict[str, Any], *keys: SigningKey) -> bytes:
        """Envelope bytes signed by `keys` (default: the release key)."""
        envelope = Envelope(signed=signed)
        for key in keys or (self.release_key,):
            envelope = envelope.sign(key)
        return envelope.to_bytes()

    def release_like(
        self, template: bytes, *, version: int, artifact: bytes, chunk_size: int, **changes: Any
    ) -> tuple[Release, bytes]:
        """A release copied from a genuine one, for another version and artifact."""
        genuine = Release.from_dict(Envelope.from_bytes(template).signed)
        now = utc_now().replace(microsecond=0)
        fields = {
            "version": version,
            "artifact": Artifact.describe(artifact, chunk_size),
            "created": now,
            "expires": now + timedelta(days=1),
            **changes,
        }
        release = _replace(genuine, fields)
        return release, self.sign(release.to_dict())

    def assignment(
        self, device_id: str, seq: int, models: dict[str, AssignedModel], *,
        expires: datetime | None = None, keys: tuple[SigningKey, ...] = (),
    ) -> bytes:  # fmt: skip
        """A signed assignment."""
        now = utc_now().replace(microsecond=0)
        assignment = Assignment(
            device_id=device_id, seq=seq, created=now,
            expires=expires or now + timedelta(days=1), models=models,
        )  # fmt: skip
        return self.sign(assignment.to_dict(), *keys)


def _replace(release: Release, fields: dict[str, Any]) -> Release:
    return replace(release, **fields)


def pinned(release: Release) -> AssignedModel:
    """The assignment entry that pins `release`."""
    return AssignedModel(release.version, release.artifact.sha256, release.artifact.size)


def chunks_of(data: bytes, chunk_size: int) -> list[bytes]:
    """`data` cut as the protocol cuts artifacts."""
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


def sha256(data: bytes) -> str:
    """Hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def with_settings(config: str, extra_toml: str) -> str:
    """`config` with the lines of `extra_toml` added: into a table the config already has (TOML
    declares each table once), else as new tables at the end."""
    lines = config.splitlines()
    tail: list[str] = []
    insert_at: int | None = None
    for line in extra_toml.splitlines():
        if line.startswith("["):
            insert_at = lines.index(line) + 1 if line in lines else None
            if insert_at is None:
                tail.append(line)
        elif insert_at is None:
            tail.append(line)
        else:
            insert_at = _drop_key(lines, insert_at, line)
            lines.insert(insert_at, line)
            insert_at += 1
    return "\n".join([*lines, "", *tail]) + "\n"


def _drop_key(lines: list[str], start: int, line: str) -> int:
    """Remove the table's own line for the key `line` sets (a table holds each key once);
    return where the table's body starts."""
    key = line.split("=", 1)[0].strip()
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    for i in range(start, end):
        if "=" in lines[i] and lines[i].split("=", 1)[0].strip() == key:
            del lines[i]
            break
    return start
