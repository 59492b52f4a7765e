"""Real mosquitto brokers for tests: config files, process control and MQTT test clients."""

from __future__ import annotations

import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from .certs import CertificateAuthority, issue_server_cert, make_ca

LOCALHOST = "127.0.0.1"
# Generous on purpose: CI machines are small and busy; happy paths finish in milliseconds.
DEFAULT_TIMEOUT = 10.0
INSTALL_HINT = "apt-get install -y mosquitto"

REGISTRY_USER = "registry"
DEVICE_USERS = ("dev-a", "dev-b")
DEFAULT_USERS: Mapping[str, str] = {
    REGISTRY_USER: "registry-secret",
    **{device: f"{device}-secret" for device in DEVICE_USERS},
}

# mosquitto replaces %u with the connecting username, so these lines confine every
# device to its own subtree under edge/v1/devices/.
_DEVICE_PATTERNS = """\
pattern read edge/v1/devices/%u/assignment
pattern write edge/v1/devices/%u/state
pattern write edge/v1/devices/%u/events
pattern write edge/v1/devices/%u/telemetry
"""
# Read by every device; granted per user because mosquitto warns about patterns
# that contain neither %u nor %c.
_SHARED_CHANNELS = ("edge/v1/trust/#", "edge/v1/releases/#", "edge/v1/artifacts/#")

T = TypeVar("T")


class MosquittoNotFoundError(RuntimeError):
    """The mosquitto binaries are not installed."""


class BrokerStartError(RuntimeError):
    """mosquitto exited or did not accept connections in time."""


class ConnectRefusedError(RuntimeError):
    """The broker refused CONNECT, or dropped the connection before any CONNACK."""

    def __init__(self, reason_code: ReasonCode) -> None:
        super().__init__(f"MQTT connection refused or dropped during the handshake: {reason_code}")
        self.reason_code = reason_code


def find_mosquitto() -> Path:
    """Return the mosquitto broker binary, searching PATH and then /usr/sbin."""
    # /usr/sbin is often missing from PATH for non-root users, where Debian installs it.
    return _find_binary("mosquitto", ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"))


def find_mosquitto_passwd() -> Path:
    """Return the mosquitto_passwd binary that ships with the broker."""
    return _find_binary("mosquitto_passwd", ("/usr/bin/mosquitto_passwd",))


def _find_binary(name: str, fallbacks: tuple[str, ...]) -> Path:
    """Locate an executable on PATH or at a well-known fallback path."""
    found = shutil.which(name)
    if found:
        return Path(found)
    for candidate in map(Path, fallbacks):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise MosquittoNotFoundError(
        f"`{name}` was not found on PATH or in {', '.join(fallbacks)}; "
        f"the MQTT tests need a real broker: run `{INSTALL_HINT}`"
    )


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port that is currently free on `host` (never the system broker's 1883)."""
    # The kernel picks from the ephemeral range; the tiny race until mosquitto binds is
    # reported clearly by MosquittoProcess.start() if it ever happens.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class MosquittoProcess:
    """One mosquitto process for a config file; can be stopped and restarted on the same port."""

    def __init__(
        self, config_file: Path, *, host: str, port: int, log_file: Path, binary: Path | None = None
    ) -> None:
        self.config_file = config_file
        self.host = host
        self.port = port
        self.log_file = log_file
        self.binary = binary or find_mosquitto()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Start mosquitto and block until its listener accepts TCP connections."""
        if self.running:
            raise BrokerStartError(f"mosquitto on port {self.port} is already running")
        # Otherwise the readiness poll below could mistake another listener for ours.
        if _accepts_connections(self.host, self.port):
            raise BrokerStartError(self._failure("cannot start: the port is already in use"))
        # Append so a restarted broker's log follows the previous run's for post-mortems.
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(self.binary), "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_until_listening(self._proc, timeout)
        except BrokerStartError:
            self.stop()
            raise

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Terminate mosquitto, killing it if it does not exit within `timeout`."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def kill(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """SIGKILL mosquitto: it saves nothing of its state (a crash)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(timeout)

    def restart(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Stop and start again on the same port with the same config."""
        self.stop(timeout)
        self.start(timeout)

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its password and ACL files, keeping connections."""
        if self._proc is None or self._proc.poll() is not None:
            raise BrokerStartError("cannot reload: mosquitto is not running")
        self._proc.send_signal(signal.SIGHUP)

    def log_text(self) -> str:
        """Return everything mosquitto has logged so far."""
        if not self.log_file.exists():
            return ""
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def _wait_until_listening(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Poll the listener until it accepts a connection, the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise BrokerStartError(self._failure(f"exited early with code {proc.returncode}"))
            if _accepts_connections(self.host, self.port):
                return
            if time.monotonic() > deadline:
                raise BrokerStartError(self._failure(f"did not listen within {timeout:.0f}s"))
            time.sleep(0.02)

    def _failure(self, what: str) -> str:
        """Describe a start failure with the config file and the broker's own log."""
        return (
            f"mosquitto ({self.config_file}, {self.host}:{self.port}) {what}.\n"
            f"--- config ---\n{self.config_file.read_text(encoding='utf-8')}"
            f"--- log ---\n{self.log_text()}"
        )


def _accepts_connections(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


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


class _AckBook(Generic[T]):
    """Thread-safe results of acknowledged packets, keyed by message id."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._results: dict[int, T] = {}

    def record(self, mid: int, result: T) -> None:
        """Store the result for `mid` and wake waiters (called from paho's network thread)."""
        with self._cond:
            self._results[mid] = result
            self._cond.notify_all()

    def wait(self, mid: int, timeout: float, what: str) -> T:
        """Return the result for `mid`, raising TimeoutError if it does not arrive in time."""
        # The ack may arrive before the caller starts waiting, hence the stored results.
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._results, timeout):
                raise TimeoutError(f"no {what} arrived within {timeout:.0f}s")
            return self._results.pop(mid)


class MqttTestClient:
    """A connected paho client with blocking publish/subscribe and a queue of received messages."""

    def __init__(self, client: mqtt.Client, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.paho = client
        self.timeout = timeout
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        # Set when an established connection drops, e.g. because a test stopped the broker.
        self.connection_lost = threading.Event()
        self._connack: _AckBook[ReasonCode] = _AckBook()
        self._subacks: _AckBook[list[ReasonCode]] = _AckBook()
        self._pubacks: _AckBook[ReasonCode] = _AckBook()
        # Only touched from paho's network thread, so it needs no lock.
        self._handshake_over = False
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message

    @classmethod
    def connect(
        cls, client: mqtt.Client, host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT
    ) -> Self:
        """Connect `client`, start its network thread and wait for a successful CONNACK."""
        self = cls(client, timeout)
        # connect() does the TCP and TLS handshakes synchronously, so TLS errors raise here.
        if client.connect(host, port, keepalive=30) == MQTTErrorCode.MQTT_ERR_SUCCESS:
            client.loop_start()
        # Otherwise the link died while CONNECT was sent (e.g. a TLS 1.3 alert) and
        # _on_disconnect has already recorded why; a network thread would only retry.
        try:
            reason = self._connack.wait(0, timeout, "CONNACK")
        except TimeoutError:
            self.close()
            raise
        if reason.is_failure:
            self.close()
            raise ConnectRefusedError(reason)
        return self

    def subscribe(self, topic: str, qos: int = 1, *, retained: bool = True) -> list[ReasonCode]:
        """Subscribe and return the SUBACK reason codes (granted QoS or a failure code).

        `retained=False` (MQTT v5 only) asks the broker not to replay retained messages, so
        only live traffic arrives even if other tests left retained messages behind.
        """
        if retained:
            result, mid = self.paho.subscribe(topic, qos)
        else:
            options = SubscribeOptions(qos=qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            result, mid = self.paho.subscribe(topic, options=options)
        _check(result, f"subscribe to {topic}")
        assert mid is not None
        return self._subacks.wait(mid, self.timeout, "SUBACK")

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> ReasonCode:
        """Publish and wait until it is acknowledged (QoS>0) or sent (QoS 0); return the reason."""
        info = self.paho.publish(topic, payload, qos=qos, retain=retain)
        _check(info.rc, f"publish to {topic}")
        return self._pubacks.wait(info.mid, self.timeout, "PUBACK")

    def next_message(self, timeout: float | None = None) -> mqtt.MQTTMessage:
        """Return the next received message, failing the test if none arrives in time."""
        wait = self.timeout if timeout is None else timeout
        try:
            return self.messages.get(timeout=wait)
        except queue.Empty:
            raise AssertionError(f"no MQTT message arrived within {wait:.0f}s") from None

    def collect_until(self, topic: str, timeout: float | None = None) -> list[mqtt.MQTTMessage]:
        """Return all messages up to and including the first one on `topic`.

        Use a message on an allowed topic as a barrier: mosquitto delivers to one client
        in order, so anything that was going to arrive before it has arrived.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        received: list[mqtt.MQTTMessage] = []
        while not received or received[-1].topic != topic:
            received.append(self.next_message(max(0.0, deadline - time.monotonic())))
        return received

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.paho.disconnect()
        self.paho.loop_stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # paho network-thread callbacks (CallbackAPIVersion.VERSION2 signatures).

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._end_handshake(client, reason_code)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if self._handshake_over:
            self.connection_lost.set()
        # Under TLS 1.3 the server rejects a missing client certificate after the client's
        # handshake finished, so that failure shows up here instead of as a CONNACK.
        self._end_handshake(client, reason_code)

    def _end_handshake(self, client: mqtt.Client, reason_code: ReasonCode) -> None:
        """Publish the first CONNACK-or-disconnect outcome to the thread waiting in connect()."""
        if self._handshake_over:
            return
        self._handshake_over = True
        if reason_code.is_failure:
            # Ends paho's network loop instead of letting it sleep and retry bad credentials.
            client.disconnect()
        # CONNACK has no message id; 0 is free because paho never uses it for packets.
        self._connack.record(0, reason_code)

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        self._subacks.record(mid, reason_codes)

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._pubacks.record(mid, reason_code)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(message)


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


def _check(result: MQTTErrorCode, action: str) -> None:
    """Raise if paho could not even queue an operation (e.g. not connected)."""
    if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
        raise RuntimeError(f"{action} failed locally: {mqtt.error_string(result)}")


# --- broker configurations ---------------------------------------------------------------


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """Write a mosquitto password file ($7$ PBKDF2-SHA512 hashes) with mosquitto_passwd."""
    passwd = find_mosquitto_passwd()
    create = ["-c"]
    for username, password in users.items():
        _run([str(passwd), "-b", *create, str(path), username, password])
        create = []  # -c would truncate the file again for the following users.
    return path


def _run(argv: list[str]) -> None:
    """Run a helper command, raising with its output if it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stdout}{done.stderr}")


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


def edge_acl(usernames: Iterable[str]) -> str:
    """ACL text: the registry may use all of edge/v1, each other user acts as a device."""
    sections = [_DEVICE_PATTERNS, f"user {REGISTRY_USER}\ntopic readwrite edge/v1/#\n"]
    for device in usernames:
        if device != REGISTRY_USER:
            reads = "".join(f"topic read {channel}\n" for channel in _SHARED_CHANNELS)
            sections.append(f"user {device}\n{reads}")
    return "\n".join(sections)


def _write_auth_files(workdir: Path, users: Mapping[str, str]) -> tuple[Path, Path]:
    """Write the password and ACL files; return (password_file, acl_file)."""
    password_file = write_password_file(workdir / "passwd", users)
    acl_file = workdir / "acl"
    acl_file.write_text(edge_acl(users), encoding="utf-8")
    return password_file, acl_file


# --- starting brokers --------------------------------------------------------------------


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
    password_file, acl_file = _write_auth_files(workdir, users)
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
    password_file, acl_file = _write_auth_files(workdir, users)
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
