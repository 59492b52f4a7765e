"""A real edge agent on the production broker: it connects over TLS and logs no secret."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from model_registry.services.devices import BUNDLE_PASSWORD
from tests.e2e.production_broker import (
    BIN,
    DEVICE,
    REGISTRY,
    TOPICS,
    Production,
)
from tests.support.broker import (
    LOCALHOST,
    MqttTestClient,
    free_port,
)

# --- a real agent on the production broker ------------------------------------------------


def _agent_config(production: Production, directory: Path) -> tuple[Path, str, str]:
    """A device.toml for dev-a over mqtts:// with a bearer token; (config, password, token)."""
    bundle = production.bundles[DEVICE]
    token = f"tok-{uuid.uuid4().hex}"
    (directory / "server-token").write_text(token + "\n")
    (directory / "server-token").chmod(0o600)
    config = directory / "device.toml"
    config.write_text(
        f'device_id = "{DEVICE}"\n'
        f'[trust]\nroot_file = "{bundle / "root.json"}"\n'
        f"[mqtt]\n"
        f'url = "mqtts://localhost:{production.broker.port}"\n'
        f'password_file = "{bundle / BUNDLE_PASSWORD}"\n'
        f'ca_file = "{production.broker_dir / "ca.crt"}"\n'
        f'[server]\ntoken_file = "server-token"\n'
    )
    return config, (bundle / BUNDLE_PASSWORD).read_text().strip(), token


def _get(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - local http
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def test_an_agent_runs_on_the_production_broker_and_logs_no_secret(
    production: Production, tmp_path: Path
) -> None:
    config, password, token = _agent_config(production, tmp_path)
    port = free_port()
    url = f"http://{LOCALHOST}:{port}"
    argv = [str(BIN / "edge-agent"), "run", "--config", str(config), "--log-level", "DEBUG"]
    argv += ["--listen", f"{LOCALHOST}:{port}", "--state-dir", str(tmp_path / "state")]
    log = tmp_path / "agent.log"
    with production.connect(REGISTRY) as registry:
        registry.subscribe(TOPICS.state(DEVICE))
        with log.open("wb") as output:
            agent = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        try:
            online = _wait_online(registry, agent, log)
            statuses = [
                _get(f"{url}/v1/status", token),
                _get(f"{url}/v1/status", "wrong-" + token),
                _get(f"{url}/v1/status"),
            ]
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(timeout=60)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    text = log.read_text()

    assert online["device_id"] == DEVICE
    assert statuses == [200, 401, 401]
    assert code == 0, text
    assert f"connected to localhost:{production.broker.port}" in text
    for secret in (password, token, "wrong-" + token):
        assert secret not in text, "a secret appears in the agent's log"
    # Nor any prefix long enough to matter (a truncated secret is still a leak).
    assert password[:12] not in text
    assert token[:12] not in text


def _wait_online(
    registry: MqttTestClient, agent: subprocess.Popen[bytes], log: Path
) -> dict[str, object]:
    """The agent's first online state message, as the registry sees it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise AssertionError(f"edge-agent exited {agent.returncode}:\n{log.read_text()}")
        try:
            message = registry.next_message(timeout=1)
        except AssertionError:
            continue
        try:
            state = json.loads(message.payload)
        except ValueError:
            continue  # an earlier test's report on the same topic
        if isinstance(state, dict) and state.get("online"):
            return dict(state)
    raise AssertionError(f"the agent never came online:\n{log.read_text()}")
