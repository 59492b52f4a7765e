"""The mosquitto fixtures run real brokers that deliver, authenticate, authorise and encrypt."""

from __future__ import annotations

import ssl
import uuid

import pytest
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.support.broker import (
    REGISTRY_USER,
    Broker,
    BrokerFactory,
    BrokerStartError,
    ConnectRefusedError,
    MqttTestClient,
    RetainedMessages,
    free_port,
    write_config,
)
from tests.support.certs import issue_client_cert

# MQTT v5 reason codes asserted below.
BAD_USERNAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87

DEVICE = "dev-a"
OTHER_DEVICE = "dev-b"


def _topic(prefix: str) -> str:
    """A topic under `prefix` no other test uses, so session brokers can be shared."""
    return f"{prefix}/harness-{uuid.uuid4().hex[:12]}"


def _device_topic(device: str, channel: str) -> str:
    """The per-device topic edge/v1/devices/<device>/<channel>."""
    return f"edge/v1/devices/{device}/{channel}"


def _granted(reason_codes: list[ReasonCode]) -> list[int]:
    """SUBACK reason codes as integers (0-2 = granted QoS, >= 0x80 = refused)."""
    return [code.value for code in reason_codes]


@pytest.fixture(params=["mosquitto_plain", "mosquitto_auth", "mosquitto_tls"])
def any_broker(request: pytest.FixtureRequest) -> Broker:
    """Each of the three session brokers in turn."""
    broker: Broker = request.getfixturevalue(request.param)
    return broker


def test_retained_qos1_message_reaches_a_later_subscriber(
    any_broker: Broker, retained: RetainedMessages
) -> None:
    topic = _topic("edge/v1/harness")

    ack = retained.publish(any_broker, topic, b"hello")

    assert not ack.is_failure, ack
    with any_broker.connect(any_broker.admin_user) as subscriber:
        assert _granted(subscriber.subscribe(topic, qos=1)) == [1]
        message = subscriber.next_message()
    assert (message.topic, message.payload) == (topic, b"hello")
    assert message.retain
    assert message.qos == 1


@pytest.mark.parametrize(
    ("username", "password"),
    [(None, None), (DEVICE, "wrong-password"), ("intruder", "dev-a-secret")],
    ids=["anonymous", "wrong-password", "unknown-user"],
)
def test_auth_broker_refuses_bad_credentials(
    mosquitto_auth: Broker, username: str | None, password: str | None
) -> None:
    with pytest.raises(ConnectRefusedError) as refused:
        mosquitto_auth.connect(username, password)

    # mosquitto 2.0.11 answers 0x87 even for a wrong password; 0x86 would be equally correct.
    assert refused.value.reason_code.value in {BAD_USERNAME_OR_PASSWORD, NOT_AUTHORIZED}


@pytest.mark.parametrize(
    "topic_filter",
    [_device_topic(OTHER_DEVICE, "assignment"), _device_topic("+", "assignment"), "#"],
    ids=["other-device", "wildcard-device", "everything"],
)
def test_device_reads_only_its_own_assignment(
    mosquitto_auth: Broker, retained: RetainedMessages, topic_filter: str
) -> None:
    own, other = _device_topic(DEVICE, "assignment"), _device_topic(OTHER_DEVICE, "assignment")
    barrier = _topic("edge/v1/trust")
    for topic in (other, own, barrier):
        retained.publish(mosquitto_auth, topic, topic.encode())

    with mosquitto_auth.connect(DEVICE) as device:
        # mosquitto 2.0.11 grants the subscription and filters per message at delivery.
        assert _granted(device.subscribe(topic_filter)) == [1]
        device.subscribe(barrier)
        received = {message.topic for message in device.collect_until(barrier)}

    assert other not in received
    # "+" and "#" also match the device's own assignment, which it may read.
    assert {topic for topic in received if topic.startswith("edge/v1/devices/")} <= {own}


def test_device_reads_shared_channels_and_its_own_assignment(
    mosquitto_auth: Broker, retained: RetainedMessages
) -> None:
    topics = [_topic(f"edge/v1/{channel}") for channel in ("trust", "releases", "artifacts")]
    topics.append(_device_topic(DEVICE, "assignment"))
    for topic in topics:
        retained.publish(mosquitto_auth, topic, b"readable")

    with mosquitto_auth.connect(DEVICE) as device:
        received = [_receive_retained(device, topic) for topic in topics]

    assert received == topics


def _receive_retained(client: MqttTestClient, topic: str) -> str:
    """Subscribe to `topic` and return the topic of the retained message that arrives."""
    client.subscribe(topic)
    message = client.next_message()
    assert message.retain
    return message.topic


@pytest.mark.parametrize("channel", ["state", "events", "telemetry"])
def test_device_publishes_its_own_reports(mosquitto_auth: Broker, channel: str) -> None:
    topic = _device_topic(DEVICE, channel)
    with mosquitto_auth.connect(REGISTRY_USER) as registry:
        registry.subscribe(topic, retained=False)
        with mosquitto_auth.connect(DEVICE) as device:
            ack = device.publish(topic, b"report")
        message = registry.next_message()

    assert not ack.is_failure, ack
    assert (message.topic, message.payload) == (topic, b"report")


@pytest.mark.parametrize(
    ("protocol", "expected_ack"),
    # v5 can say "not authorised" in the PUBACK; v3.1.1 cannot, so mosquitto acks success.
    [(MQTTProtocolVersion.MQTTv5, NOT_AUTHORIZED), (MQTTProtocolVersion.MQTTv311, 0)],
    ids=["mqtt5", "mqtt311"],
)
@pytest.mark.parametrize(
    "forbidden",
    [
        _device_topic(OTHER_DEVICE, "state"),
        _device_topic(DEVICE, "assignment"),
        "edge/v1/releases/harness-forged",
    ],
    ids=["other-device-state", "own-assignment", "releases"],
)
def test_device_publish_outside_its_acl_is_dropped(
    mosquitto_auth: Broker, protocol: MQTTProtocolVersion, expected_ack: int, forbidden: str
) -> None:
    own_state = _device_topic(DEVICE, "state")
    with mosquitto_auth.connect(REGISTRY_USER) as registry:
        registry.subscribe(forbidden, retained=False)
        registry.subscribe(own_state, retained=False)
        with mosquitto_auth.connect(DEVICE, protocol=protocol) as device:
            ack = device.publish(forbidden, b"forged")
            # An allowed message after the forbidden one: once it arrives, so would have that.
            device.publish(own_state, b"genuine")
            still_connected = device.paho.is_connected()
        received = [
            (message.topic, message.payload) for message in registry.collect_until(own_state)
        ]

    assert received == [(own_state, b"genuine")]
    assert ack.value == expected_ack
    assert still_connected


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_broker_accepts_clients_trusting_its_ca(mosquitto_tls: Broker, host: str) -> None:
    client = mosquitto_tls.paho_client(REGISTRY_USER)

    with MqttTestClient.connect(client, host, mosquitto_tls.port) as connected:
        sock = connected.paho.socket()
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() in {"TLSv1.2", "TLSv1.3"}


def test_tls_broker_is_rejected_without_trusting_its_ca(mosquitto_tls: Broker) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        mosquitto_tls.connect(REGISTRY_USER, trust_ca=False)


def test_tls_broker_requiring_client_certificates(broker_factory: BrokerFactory) -> None:
    broker = broker_factory.tls(require_certificate=True)
    assert broker.ca is not None
    cert, key = issue_client_cert(broker.ca, DEVICE).write(broker.workdir, DEVICE)

    # TLS 1.3 reports the missing certificate after the client's handshake: no CONNACK.
    with pytest.raises((ConnectRefusedError, ssl.SSLError)):
        broker.connect(DEVICE)
    with broker.connect(DEVICE, certfile=cert, keyfile=key) as device:
        assert not device.publish(_device_topic(DEVICE, "state"), b"mutual TLS").is_failure


def test_function_scoped_broker_restarts_on_the_same_port(broker_factory: BrokerFactory) -> None:
    broker = broker_factory.plain()
    port = broker.port
    with broker.connect() as watcher:
        broker.stop()

        assert watcher.connection_lost.wait(10), "stopping the broker must drop its clients"
    with pytest.raises(ConnectionRefusedError):
        broker.connect()
    broker.start()

    assert broker.port == port
    with broker.connect() as client:
        client.subscribe("outage/after")
        client.publish("outage/after", b"2")
        assert client.next_message().payload == b"2"


def test_a_second_broker_on_a_busy_port_fails_loudly(broker_factory: BrokerFactory) -> None:
    running = broker_factory.plain()

    with pytest.raises(BrokerStartError, match="already in use"):
        broker_factory.plain(port=running.port)


def test_an_invalid_config_fails_with_the_broker_log(broker_factory: BrokerFactory) -> None:
    port = free_port()
    config = write_config(
        broker_factory.new_workdir(), f"listener {port} 127.0.0.1\nno_such_option true\n"
    )

    with pytest.raises(BrokerStartError, match="exited early") as failure:
        broker_factory.from_config(config, port=port)

    # The broker's own complaint, not just the config echoed back.
    assert 'Unknown configuration variable "no_such_option"' in str(failure.value)
