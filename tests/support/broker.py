"""Real mosquitto brokers for tests: the handle a test holds, and starting them.

What a broker is made of lives beside this module, one concern each: `mosquitto` (binaries and
the process), `broker_files` (config, passwords and ACL from the product's own writers),
`mqtt_client` (a blocking test client), `certs` (TLS material); free ports and child processes
are `edge_common.processes`. The names tests import from here are re-exported below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge_common.processes import LOCALHOST, free_port

from .broker_files import (
    REGISTRY_USER,
    auth_settings,
    common_settings,
    plain_config,
    tls_listener,
    write_auth_files,
    write_config,
)
from .certs import CertificateAuthority, issue_server_cert, make_ca
from .mosquitto import (
    DEFAULT_TIMEOUT,
    BrokerStartError,
    MosquittoNotFoundError,
    MosquittoProcess,
    find_mosquitto,
    find_mosquitto_passwd,
)
from .mqtt_client import ConnectRefusedError, MqttTestClient

__all__ = [
    "DEFAULT_TIMEOUT", "DEFAULT_USERS", "DEVICE_USERS", "LOCALHOST", "REGISTRY_USER", "Broker",
    "BrokerFactory", "BrokerStartError", "ConnectRefusedError", "MosquittoNotFoundError",
    "MosquittoProcess", "MqttTestClient", "RetainedMessages", "auth_settings", "common_settings",
    "find_mosquitto", "find_mosquitto_passwd", "free_port", "start_broker", "write_config",
]  # fmt: skip

DEVICE_USERS = ("dev-a", "dev-b")
DEFAULT_USERS: Mapping[str, str] = {
    REGISTRY_USER: "registry-secret",
    **{device: f"{device}-secret" for device in DEVICE_USERS},
}


@dataclass(frozen=True)
class Broker:
    """A running test broker and everything a client needs to reach it."""

    host: str
    port: int
    tls: bool
    ca_file: Path | None
    users: Mapping[str, str]
    workdir: Path
    process: MosquittoProcess = field(repr=False)
    # Kept so tests can issue client certificates the broker trusts.
    ca: CertificateAuthority | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The broker address as an mqtt:// or mqtts:// URL."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def admin_user(self) -> str | None:
        """The user allowed everywhere under edge/v1: the registry, or anonymous if no users."""
        return REGISTRY_USER if REGISTRY_USER in self.users else None

    @property
    def log_file(self) -> Path:
        """Path of the broker's combined stdout/stderr log."""
        return self.process.log_file

    def start(self) -> None:
        """Start the broker again after stop(), on the same port."""
        self.process.start()

    def stop(self) -> None:
        """Stop the broker process (no-op if it is not running)."""
        self.process.stop()

    def kill(self) -> None:
        """Crash the broker (SIGKILL): what it had not saved is gone."""
        self.process.kill()

    def restart(self) -> None:
        """Stop and start the broker on the same port (retained state is lost)."""
        self.process.restart()

    def reload(self) -> None:
        """Make the broker re-read its password and ACL files."""
        self.process.reload()

    def password(self, username: str) -> str:
        """Return the configured password of `username`."""
        try:
            return self.users[username]
        except KeyError:
            raise KeyError(f"{username!r} is not a user of {self.url}") from None

    def paho_client(
        self,
        username: str | None = None,
        password: str | None = None,
        *,
        client_id: str = "",
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
        trust_ca: bool = True,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        reconnect_on_failure: bool = True,
    ) -> mqtt.Client:
        """Build an unconnected paho client with credentials and TLS set up for this broker.

        `username=None` connects anonymously; a known username without a password uses
        the configured one.  `trust_ca=False` uses only the system trust store.
        """
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            reconnect_on_failure=reconnect_on_failure,
        )
        if username is not None:
            client.username_pw_set(username, password or self.password(username))
        if self.tls:
            ca_certs = str(self.ca_file) if trust_ca and self.ca_file else None
            client.tls_set(
                ca_certs=ca_certs,
                certfile=str(certfile) if certfile else None,
                keyfile=str(keyfile) if keyfile else None,
            )
        return client

    def connect(
        self,
        username: str | None = None,
        password: str | None = None,
        *,
        client_id: str = "",
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
        trust_ca: bool = True,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> MqttTestClient:
        """Connect a new client and wait for a successful CONNACK.

        Raises ConnectRefusedError for a refused or dropped handshake and ssl/OS errors
        for failed TCP or TLS connections; arguments are as for paho_client().  The client
        does not reconnect: after an outage, watch `connection_lost` and connect a new one.
        """
        client = self.paho_client(
            username,
            password,
            client_id=client_id,
            protocol=protocol,
            trust_ca=trust_ca,
            certfile=certfile,
            keyfile=keyfile,
            # paho's retry loop sleeps in 1 s steps, which would stall close() after a drop.
            reconnect_on_failure=False,
        )
        return MqttTestClient.connect(client, self.host, self.port, timeout=timeout)


class RetainedMessages:
    """Publishes retained messages and deletes them again, so shared brokers stay clean."""

    def __init__(self) -> None:
        self._published: list[tuple[Broker, str, str | None]] = []

    def publish(
        self, broker: Broker, topic: str, payload: bytes, *, username: str | None = None
    ) -> ReasonCode:
        """Publish a retained QoS 1 message from a fresh connection; return the PUBACK reason.

        `username` defaults to the broker's admin user.
        """
        username = username or broker.admin_user
        self._published.append((broker, topic, username))
        with broker.connect(username) as client:
            return client.publish(topic, payload, qos=1, retain=True)

    def clear(self) -> None:
        """Delete every retained message published here (an empty retained payload does that)."""
        for broker, topic, username in reversed(self._published):
            if broker.process.running:
                with broker.connect(username) as client:
                    client.publish(topic, b"", qos=1, retain=True)
        self._published.clear()


def start_broker(
    config_file: Path,
    *,
    port: int,
    host: str = LOCALHOST,
    tls: bool = False,
    ca_file: Path | None = None,
    users: Mapping[str, str] | None = None,
    ca: CertificateAuthority | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Broker:
    """Start mosquitto with an existing config file (e.g. one the product generated).

    `host`/`port` must match the config's listener: they are where readiness is polled.
    """
    workdir = config_file.parent
    process = MosquittoProcess(
        config_file, host=host, port=port, log_file=workdir / "mosquitto.log"
    )
    process.start(timeout)
    return Broker(
        host=host,
        port=port,
        tls=tls,
        ca_file=ca_file,
        users=dict(users or {}),
        workdir=workdir,
        process=process,
        ca=ca,
    )


def start_plain_broker(workdir: Path, *, port: int | None = None) -> Broker:
    """Start an anonymous plain-TCP broker on 127.0.0.1."""
    port = port or free_port()
    config = write_config(workdir, plain_config(LOCALHOST, port))
    return start_broker(config, port=port)


def start_auth_broker(
    workdir: Path, *, port: int | None = None, users: Mapping[str, str] = DEFAULT_USERS
) -> Broker:
    """Start a plain-TCP broker with password authentication and the edge ACL."""
    port = port or free_port()
    password_file, acl_file = write_auth_files(workdir, users)
    text = (
        common_settings()
        + f"listener {port} {LOCALHOST}\n"
        + auth_settings(password_file, acl_file)
    )
    return start_broker(write_config(workdir, text), port=port, users=users)


def start_tls_broker(
    workdir: Path,
    *,
    port: int | None = None,
    users: Mapping[str, str] = DEFAULT_USERS,
    ca: CertificateAuthority | None = None,
    require_certificate: bool = False,
) -> Broker:
    """Start a TLS broker (server cert for localhost/127.0.0.1) with passwords and the edge ACL."""
    port = port or free_port()
    ca = ca or make_ca()
    ca_file = ca.write(workdir)
    cert_file, key_file = issue_server_cert(ca, ("localhost", LOCALHOST)).write(workdir, "server")
    password_file, acl_file = write_auth_files(workdir, users)
    text = (
        common_settings()
        + tls_listener(
            LOCALHOST, port, ca_file, cert_file, key_file, require_cert=require_certificate
        )
        + auth_settings(password_file, acl_file)
    )
    config = write_config(workdir, text)
    return start_broker(config, port=port, tls=True, ca_file=ca_file, users=users, ca=ca)


class BrokerFactory:
    """Starts brokers in per-call directories and stops every one of them on close()."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._brokers: list[Broker] = []
        self._count = 0

    def plain(self, *, port: int | None = None) -> Broker:
        """Start an anonymous plain-TCP broker."""
        return self._track(start_plain_broker(self.new_workdir("plain"), port=port))

    def auth(self, *, port: int | None = None, users: Mapping[str, str] = DEFAULT_USERS) -> Broker:
        """Start a password + ACL broker."""
        return self._track(start_auth_broker(self.new_workdir("auth"), port=port, users=users))

    def tls(
        self,
        *,
        port: int | None = None,
        users: Mapping[str, str] = DEFAULT_USERS,
        ca: CertificateAuthority | None = None,
        require_certificate: bool = False,
    ) -> Broker:
        """Start a TLS + password + ACL broker (see start_tls_broker())."""
        workdir = self.new_workdir("tls")
        return self._track(
            start_tls_broker(
                workdir, port=port, users=users, ca=ca, require_certificate=require_certificate
            )
        )

    def from_config(
        self,
        config_file: Path,
        *,
        port: int,
        host: str = LOCALHOST,
        tls: bool = False,
        ca_file: Path | None = None,
        users: Mapping[str, str] | None = None,
        ca: CertificateAuthority | None = None,
    ) -> Broker:
        """Start mosquitto from an existing config file whose listener is host:port.

        Put the config and its files in `new_workdir()`; the other arguments only describe
        the broker to clients (see start_broker()).
        """
        return self._track(
            start_broker(
                config_file, port=port, host=host, tls=tls, ca_file=ca_file, users=users, ca=ca
            )
        )

    def new_workdir(self, kind: str = "custom") -> Path:
        """Create a fresh directory for the next broker's files."""
        self._count += 1
        path = self.root / f"{kind}-{self._count}"
        path.mkdir(parents=True)
        return path

    def close(self) -> None:
        """Stop every broker this factory started."""
        for broker in self._brokers:
            broker.stop()
        self._brokers.clear()

    def _track(self, broker: Broker) -> Broker:
        """Remember a broker so close() stops it."""
        self._brokers.append(broker)
        return broker
