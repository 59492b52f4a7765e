"""The two common TLS mistakes against a real mosquitto, said in words that point to the fix.

The broker runs from the files `broker-config --tls --tls-host broker.lab` writes, so its
certificate names only `broker.lab`: connecting to 127.0.0.1 is a hostname mismatch, and
`mqtt://` to it speaks plain MQTT to a TLS listener.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.config.settings import MqttSettings
from edge_agent.errors import MqttConnectError
from edge_agent.mqtt import AgentMqtt
from tests.support.broker import LOCALHOST, Broker, BrokerFactory, free_port
from tests.support.registry import cli

BIN = Path(sys.executable).parent
CERT_NAME = "broker.lab"


@dataclass(frozen=True)
class TlsBroker:
    """A registry home and the TLS mosquitto configured for it."""

    home: Path
    broker: Broker
    ca_file: Path

    @property
    def registry_password(self) -> str:
        """The registry's MQTT password."""
        return (self.home / "secrets" / "mqtt-password").read_text().strip()


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    root = tmp_path_factory.mktemp("tls-mistakes")
    home = root / "home"
    cli("init", "--home", str(home))
    factory = BrokerFactory(root / "brokers")
    out, port = factory.new_workdir("broker-config"), free_port()
    cli("broker-config", "--home", str(home), "--out", str(out), "--tls", "--port", str(port),
        "--listen-host", LOCALHOST, "--tls-host", CERT_NAME)  # fmt: skip
    password = (home / "secrets" / "mqtt-password").read_text().strip()
    broker = factory.from_config(
        out / "mosquitto.conf",
        port=port,
        tls=True,
        ca_file=out / "ca.crt",
        users={"registry": password},
    )
    yield TlsBroker(home, broker, out / "ca.crt")
    factory.close()


def _serve(tls_broker: TlsBroker, url: str) -> subprocess.CompletedProcess[str]:
    # registry.toml's ca_file is relative to the home; the CA broker-config wrote is elsewhere.
    toml = tls_broker.home / "registry.toml"
    text = toml.read_text()
    toml.write_text(text.replace('ca_file = ""', f'ca_file = "{tls_broker.ca_file}"', 1))
    return subprocess.run(
        [str(BIN / "model-registry"), "serve", "--home", str(tls_broker.home),
         "--listen", f"{LOCALHOST}:{free_port()}", "--mqtt-url", url],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_registry_names_the_hostname_the_certificate_is_for(tls_broker: TlsBroker) -> None:
    result = _serve(tls_broker, f"mqtts://{LOCALHOST}:{tls_broker.broker.port}")
    assert result.returncode == 1, result.stderr
    assert f"the broker's certificate is for {CERT_NAME}, not {LOCALHOST}" in result.stderr
    assert f"--tls-host {LOCALHOST}" in result.stderr
    assert "Traceback" not in result.stderr


def test_registry_suggests_mqtts_for_a_tls_listener(tls_broker: TlsBroker) -> None:
    result = _serve(tls_broker, f"mqtt://{LOCALHOST}:{tls_broker.broker.port}")
    assert result.returncode == 1, result.stderr
    assert "closed the connection before accepting it" in result.stderr
    assert "use mqtts://" in result.stderr
    assert "Traceback" not in result.stderr


def _agent_settings(tls_broker: TlsBroker, scheme: str) -> MqttSettings:
    return MqttSettings(
        url=f"{scheme}://{LOCALHOST}:{tls_broker.broker.port}",
        username="registry",
        password=tls_broker.registry_password,
        ca_file=tls_broker.ca_file if scheme == "mqtts" else None,
    )


async def test_agent_names_the_hostname_the_certificate_is_for(tls_broker: TlsBroker) -> None:
    with pytest.raises(MqttConnectError) as raised:
        async with AgentMqtt(_agent_settings(tls_broker, "mqtts"), client_id="tls-mismatch"):
            pass
    message = str(raised.value)
    assert f"the broker's certificate is for {CERT_NAME}, not {LOCALHOST}" in message
    assert "ca_file" not in message  # the CA is right: do not send anyone checking it


async def test_agent_suggests_mqtts_for_a_tls_listener(tls_broker: TlsBroker) -> None:
    with pytest.raises(MqttConnectError, match=r"use mqtts://"):
        async with AgentMqtt(_agent_settings(tls_broker, "mqtt"), client_id="tls-plain"):
            pass


async def test_agent_with_the_right_name_connects(tls_broker: TlsBroker) -> None:
    # The same broker, CA and password, through a name its certificate lists: only the name
    # was wrong. broker.lab does not resolve here, so the check is that the mismatch is gone.
    settings = _agent_settings(tls_broker, "mqtts")
    with pytest.raises(MqttConnectError) as raised:
        async with AgentMqtt(
            MqttSettings(
                url=f"mqtts://{CERT_NAME}:{tls_broker.broker.port}",
                username=settings.username,
                password=settings.password,
                ca_file=settings.ca_file,
            ),
            client_id="tls-right-name",
        ):
            pass
    assert "certificate is for" not in str(raised.value)
