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
import ssl
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from paho.mqtt.enums import MQTTProtocolVersion

from edge_protocol.topics import Topics
from model_registry.errors import ConflictError, InvalidInputError
from model_registry.mqtt.acl import is_allowed
from model_registry.mqtt.broker_config import (
    BrokerConfigFiles,
    find_dynsec_plugin,
    write_broker_config,
)
from model_registry.mqtt.credentials import generate_password, hash_password, pbkdf2_fields
from model_registry.mqtt.limits import MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES
from tests.support.broker import (
    LOCALHOST,
    Broker,
    ConnectRefusedError,
    RetainedMessages,
    free_port,
    start_broker,
)

TOPICS = Topics()
P = TOPICS.prefix
REGISTRY = "registry"
DEV, OTHER = "dev-a", "dev-b"
SHA = "ef" * 32
NOT_AUTHORIZED = 0x87
ME = pwd.getpwuid(os.geteuid()).pw_name  # mosquitto started as root would switch to `mosquitto`
V311 = MQTTProtocolVersion.MQTTv311


def dynsec_plugin() -> Path:
    """The dynamic-security plugin of the mosquitto installed here (part of the package)."""
    plugin = find_dynsec_plugin()
    if plugin is None:
        pytest.fail("mosquitto_dynamic_security.so not found: run `apt-get install -y mosquitto`")
    return plugin


def provision(names: tuple[str, ...]) -> dict[str, str]:
    """Fresh passwords for the registry and `names`."""
    return {name: generate_password() for name in (REGISTRY, *names)}


def write(
    out: Path, users: dict[str, str], *, port: int = 18830, **options: object
) -> BrokerConfigFiles:
    """write_broker_config with the users' hashes and defaults a test can override."""
    devices = [(name, hash_password(pw)) for name, pw in users.items() if name != REGISTRY]
    arguments: dict[str, object] = {
        "topics": TOPICS,
        "listen_host": LOCALHOST,
        "port": port,
        "registry_user": REGISTRY,
        "registry_password_hash": hash_password(users[REGISTRY]),
        "devices": devices,
        "tls": False,
        "run_as_user": ME,
        "dynsec_plugin": dynsec_plugin(),
        **options,
    }
    return write_broker_config(out, **arguments)  # type: ignore[arg-type]


def start(files: BrokerConfigFiles, port: int, users: dict[str, str], tls: bool) -> Broker:
    """Run mosquitto on the generated mosquitto.conf, untouched."""
    return start_broker(files.config, port=port, users=users, tls=tls, ca_file=files.ca_cert)


@pytest.fixture(scope="module")
def users() -> dict[str, str]:
    return provision((DEV, OTHER))


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory, users: dict[str, str]) -> Iterator[Broker]:
    """mosquitto on a plain listener, configured only by write_broker_config."""
    port = free_port()
    files = write(tmp_path_factory.mktemp("broker-config"), users, port=port)
    broker = start(files, port, users, tls=False)
    yield broker
    broker.stop()


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


# --- a real mosquitto on the generated files ---------------------------------------------


def test_devices_connect_with_their_own_credentials_only(mosquitto: Broker) -> None:
    for protocol in (MQTTProtocolVersion.MQTTv311, MQTTProtocolVersion.MQTTv5):
        with mosquitto.connect(DEV, client_id=DEV, protocol=protocol), mosquitto.connect(REGISTRY):
            pass
    for username, password in [(None, None), (DEV, "wrong"), (DEV, mosquitto.password(OTHER))]:
        with pytest.raises(ConnectRefusedError) as refused:
            mosquitto.connect(username, password, client_id=DEV)
        assert refused.value.reason_code.is_failure


def test_a_device_reads_only_its_own_assignment(
    mosquitto: Broker, retained: RetainedMessages
) -> None:
    retained.publish(mosquitto, TOPICS.assignment(DEV), b"mine")
    retained.publish(mosquitto, TOPICS.assignment(OTHER), b"theirs")
    with mosquitto.connect(DEV, client_id=DEV) as device:
        # As on the embedded broker: a filter that could match another device's is refused.
        for wide in (f"{P}/devices/+/assignment", f"{P}/devices/#", f"{P}/#", "#"):
            assert [code.is_failure for code in device.subscribe(wide)] == [True], wide
        assert [code.is_failure for code in device.subscribe(TOPICS.assignment(OTHER))] == [True]
        device.subscribe(TOPICS.assignment(DEV))
        barrier = f"{P}/trust/barrier"
        device.subscribe(barrier)
        with mosquitto.connect(REGISTRY) as registry:
            registry.publish(barrier, b"barrier")
        received = device.collect_until(barrier)
    assert [(m.topic, m.payload) for m in received] == [
        (TOPICS.assignment(DEV), b"mine"),
        (barrier, b"barrier"),
    ]


def test_a_device_reads_only_its_own_acks(mosquitto: Broker) -> None:
    with mosquitto.connect(DEV, client_id=DEV) as device:
        assert [code.is_failure for code in device.subscribe(f"{P}/devices/+/acks")] == [True]
        assert [code.is_failure for code in device.subscribe(TOPICS.acks(OTHER))] == [True]
        device.subscribe(TOPICS.acks(DEV))
        with mosquitto.connect(REGISTRY) as registry:
            registry.publish(TOPICS.acks(OTHER), b"theirs")
            registry.publish(TOPICS.acks(DEV), b"mine")
        received = device.collect_until(TOPICS.acks(DEV))
    assert [(m.topic, m.payload) for m in received] == [(TOPICS.acks(DEV), b"mine")]


@pytest.mark.parametrize(
    "topic",
    [
        TOPICS.state(OTHER),
        TOPICS.events(OTHER),
        TOPICS.telemetry(OTHER),
        TOPICS.assignment(DEV),
        TOPICS.assignment(OTHER),
        TOPICS.acks(DEV),
        TOPICS.acks(OTHER),
        TOPICS.release("iris", 1),
        TOPICS.artifact_chunk(SHA, 0),
        TOPICS.root(1),
        "$CONTROL/dynamic-security/v1",
    ],
)
def test_a_device_cannot_publish_outside_its_own_reports(mosquitto: Broker, topic: str) -> None:
    with mosquitto.connect(DEV, client_id=DEV) as device:
        assert device.publish(topic, b"forged").value == NOT_AUTHORIZED
        assert not device.publish(TOPICS.events(DEV), b"allowed").is_failure


def test_refused_publishes_of_a_mqtt311_device_never_reach_the_registry(mosquitto: Broker) -> None:
    with mosquitto.connect(REGISTRY) as registry:
        registry.subscribe(f"{P}/#", retained=False)
        with mosquitto.connect(DEV, client_id=DEV, protocol=V311) as device:
            device.publish(TOPICS.assignment(OTHER), b"forged")  # acknowledged, then dropped
            device.publish(TOPICS.release("iris", 9), b"forged")
            device.publish(TOPICS.state(DEV), b"barrier")
        received = registry.collect_until(TOPICS.state(DEV))
    assert [m.payload for m in received] == [b"barrier"]


def test_the_registry_publishes_retained_everywhere_under_the_prefix(
    mosquitto: Broker, retained: RetainedMessages
) -> None:
    topics = [TOPICS.root(1), TOPICS.release("iris", 1), TOPICS.artifact_chunk(SHA, 0),
              TOPICS.assignment(DEV), TOPICS.state(DEV), P]  # fmt: skip
    for topic in topics:
        assert not retained.publish(mosquitto, topic, topic.encode()).is_failure
    with mosquitto.connect(REGISTRY) as reader:
        reader.subscribe(f"{P}/#")
        reader.subscribe(P)
        got = {m.topic: m.payload for m in (reader.next_message() for _ in topics)}
    assert got == {topic: topic.encode() for topic in topics}
    with mosquitto.connect(REGISTRY) as registry:
        assert registry.publish("elsewhere/x", b"x").value == NOT_AUTHORIZED


def test_a_will_is_published_only_on_a_topic_the_device_may_write(mosquitto: Broker) -> None:
    with mosquitto.connect(REGISTRY) as registry:
        registry.subscribe(f"{P}/#", retained=False)
        for will_topic in (TOPICS.assignment(OTHER), TOPICS.state(DEV)):
            client = mosquitto.paho_client(DEV, client_id=DEV, protocol=V311)
            client.will_set(will_topic, b"offline", qos=1)
            # By hand, without a network thread that would reconnect after the cut.
            client.connect(mosquitto.host, mosquitto.port)
            while not client.is_connected():
                assert client.loop(1.0) == 0
            sock = client.socket()
            assert sock is not None
            sock.close()  # vanish without DISCONNECT
        received = registry.collect_until(TOPICS.state(DEV))
    assert [(m.topic, m.payload) for m in received] == [(TOPICS.state(DEV), b"offline")]


CROSS_CHECK = [
    TOPICS.root(1), TOPICS.release("iris", 2), TOPICS.artifact_chunk(SHA, 3),
    TOPICS.assignment(DEV), TOPICS.assignment(OTHER), TOPICS.state(DEV), TOPICS.state(OTHER),
    TOPICS.events(DEV), TOPICS.telemetry(OTHER), TOPICS.acks(DEV), TOPICS.acks(OTHER),
    f"{P}/trust/extra/level", f"{P}/unknown", P,
]  # fmt: skip
FILTERS = [
    f"{P}/#", f"{P}/trust/#", f"{P}/trust/root/+", f"{P}/releases/+/+", f"{P}/artifacts/{SHA}/+",
    f"{P}/devices/+/assignment", f"{P}/devices/{DEV}/#", f"{P}/devices/{DEV}/+", "#", "+/v1/#",
    f"{P}/devices/+/acks",
    # Registry replicas share device reports in their group; no other group, nobody else.
    f"$share/model-registry/{P}/devices/+/events", f"$share/other/{P}/devices/+/events",
]  # fmt: skip


@pytest.mark.parametrize("username", [DEV, REGISTRY])
def test_is_allowed_agrees_with_mosquitto(mosquitto: Broker, username: str) -> None:
    """For each topic and filter, mosquitto's verdicts equal is_allowed's."""
    tag = uuid.uuid4().hex.encode()
    with mosquitto.connect(username, client_id=username) as client:
        granted = {f for f in [*CROSS_CHECK, *FILTERS] if not client.subscribe(f)[0].is_failure}
        writable = {topic for topic in CROSS_CHECK if not client.publish(topic, tag).is_failure}
        with mosquitto.connect(REGISTRY) as registry:
            for topic in CROSS_CHECK:
                registry.publish(topic, tag)
            barrier = f"{P}/trust/barrier"
            client.subscribe(barrier)
            registry.publish(barrier, b"barrier")
        readable = {m.topic for m in client.collect_until(barrier) if m.payload == tag}
    for topic in CROSS_CHECK:
        assert (topic in writable) == is_allowed(TOPICS, REGISTRY, username, topic, "write"), topic
        assert (topic in readable) == is_allowed(TOPICS, REGISTRY, username, topic, "read"), topic
    for topic_filter in [*CROSS_CHECK, *FILTERS]:
        verdict = is_allowed(TOPICS, REGISTRY, username, topic_filter, "subscribe")
        assert (topic_filter in granted) == verdict, topic_filter


def test_retained_documents_survive_a_restart(tmp_path: Path) -> None:
    users = provision(())
    port = free_port()
    broker = start(write(tmp_path, users, port=port), port, users, tls=False)
    try:
        with broker.connect(REGISTRY) as registry:
            registry.publish(TOPICS.root(1), b"root-1", retain=True)
        broker.restart()
        with broker.connect(REGISTRY) as registry:
            registry.subscribe(TOPICS.root(1))
            assert registry.next_message().payload == b"root-1"
    finally:
        broker.stop()


def test_tls_listener_serves_the_generated_certificate(tmp_path: Path) -> None:
    users = provision((DEV,))
    port = free_port()
    files = write(tmp_path, users, port=port, tls=True)
    broker = start(files, port, users, tls=True)
    try:
        with broker.connect(DEV, client_id=DEV, protocol=V311) as device:
            sock = device.paho.socket()
            assert isinstance(sock, ssl.SSLSocket)
            assert sock.version() == "TLSv1.3"  # `tls_version tlsv1.2` is a minimum
        with pytest.raises(ssl.SSLCertVerificationError):
            broker.connect(DEV, client_id=DEV, trust_ca=False)  # our CA is not in the system store
        with pytest.raises(ConnectRefusedError):
            broker.connect(None)
    finally:
        broker.stop()


def test_regenerating_with_tls_keeps_the_ca_devices_trust(tmp_path: Path) -> None:
    users = provision((DEV,))
    first = write(tmp_path, users, tls=True)
    assert first.ca_cert is not None
    assert first.server_cert is not None
    ca_before = first.ca_cert.read_bytes()
    server_before = first.server_cert.read_bytes()
    again = write(tmp_path, provision((DEV, "dev-2")), tls=True, overwrite=True)
    assert again.ca_cert is not None
    assert again.server_cert is not None
    assert again.ca_cert.read_bytes() == ca_before, "provisioned devices keep trusting the broker"
    assert again.server_cert.read_bytes() != server_before
