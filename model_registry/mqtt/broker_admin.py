"""Giving a newly provisioned device its broker credentials while the broker runs.

On the embedded broker there is nothing to do: it reads each login's password hash from the
registry's storage. On mosquitto run from `broker-config`, the registry is the admin client of
the dynamic-security plugin and sends it the device's client and role (`dynsec`); a broker that
never answers (one configured some other way) or cannot be reached is reported, with what the
operator must do instead, never silently ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from edge_protocol.topics import Topics
from model_registry.mqtt import dynsec
from model_registry.mqtt.client import MqttConnection, MqttMessage

log = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 10.0  # the plugin answers in milliseconds; a broker without it never does
# Deleting what is not there (a device's first login) is no failure; any other error is.
_IGNORED = frozenset({("deleteClient", "Client not found"), ("deleteRole", "Role not found")})
_MAX_RESPONSE_BYTES = 1024 * 1024
Status = Literal["added", "removed", "not_connected", "no_answer", "refused"]
REGENERATE = (
    "regenerate the broker files with `model-registry broker-config --force` and restart "
    "mosquitto before the device connects"
)


@dataclass(frozen=True)
class BrokerOutcome:
    """What became of a device's credentials on the broker, in a sentence for the operator."""

    status: Status
    detail: str

    @property
    def ok(self) -> bool:
        """Whether the broker holds the change now."""
        return self.status in ("added", "removed")


class BrokerAccess(Protocol):
    """How the registry changes who may log in to its broker."""

    async def admit(self, device_id: str, password: str) -> BrokerOutcome:
        """Let `device_id` log in with `password` from now on."""

    async def revoke(self, device_id: str) -> BrokerOutcome:
        """Stop `device_id` from logging in, and disconnect it."""


def not_connected() -> BrokerOutcome:
    """The outcome when the registry runs without any broker connection."""
    detail = f"the registry is not connected to a broker: {REGENERATE}"
    return BrokerOutcome("not_connected", detail)


class Disconnects(Protocol):
    """What EmbeddedAccess needs of the embedded broker."""

    async def disconnect(self, username: str) -> int:
        """Close the connections of `username`; return how many there were."""


class EmbeddedAccess:
    """The embedded broker: it looks every login up in the registry's storage."""

    def __init__(self, broker: Disconnects | None = None) -> None:
        self._broker = broker

    async def admit(self, device_id: str, password: str) -> BrokerOutcome:
        """Nothing to send: the device's stored hash is what the broker checks."""
        return BrokerOutcome("added", "the embedded broker admits the device at once")

    async def revoke(self, device_id: str) -> BrokerOutcome:
        """A device no longer in storage cannot log in; close the connection it still has."""
        closed = 0 if self._broker is None else await self._broker.disconnect(device_id)
        cut = ", and closed its connection" if closed else ""
        detail = f"the embedded broker refuses devices it does not know{cut}"
        return BrokerOutcome("removed", detail)


class DynsecAdmin:
    """Sends dynamic-security commands over the registry's own connection and awaits answers."""

    def __init__(
        self, connection: MqttConnection, topics: Topics, timeout_s: float = ANSWER_TIMEOUT_S
    ) -> None:
        self._connection = connection
        self._topics = topics
        self._timeout_s = timeout_s
        self._waiting: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}
        connection.route(dynsec.RESPONSE_TOPIC, self._on_response)
        connection.subscribe(dynsec.RESPONSE_TOPIC)

    async def admit(self, device_id: str, password: str) -> BrokerOutcome:
        """Create the device's client (bound to its id) and role on the running broker."""
        commands = dynsec.add_device_commands(self._topics, device_id, password)
        return await self._run(commands, "added", "broker credentials added on the running broker")

    async def revoke(self, device_id: str) -> BrokerOutcome:
        """Delete the device's client and role; the broker disconnects it."""
        commands = dynsec.remove_device_commands(device_id)
        return await self._run(commands, "removed", "broker credentials removed, device cut off")

    async def _run(
        self, commands: list[dict[str, Any]], status: Status, done: str
    ) -> BrokerOutcome:
        connection = self._connection
        if not connection.connected:
            # Not queued for later: paho would hold the password in memory until a reconnect.
            return BrokerOutcome("not_connected", f"the broker is not reachable now: {REGENERATE}")
        try:
            answers = await self._send(commands)
        except TimeoutError:
            # Asked again next time: a busy connection is no proof the plugin is missing.
            log.warning("the broker did not answer on %s", dynsec.RESPONSE_TOPIC)
            return self._no_answer()
        errors = [
            f"{a.get('command')}: {a['error']}"
            for a in answers
            if a.get("error") is not None and (a.get("command"), a["error"]) not in _IGNORED
        ]
        if errors:
            return BrokerOutcome("refused", f"the broker refused: {'; '.join(errors)}")
        return BrokerOutcome(status, done)

    async def _send(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        batch = uuid.uuid4().hex
        tagged = [{**command, "correlationData": batch} for command in commands]
        answer: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._waiting[batch] = answer
        try:
            async with asyncio.timeout(self._timeout_s):
                payload = json.dumps({"commands": tagged}).encode()
                await self._connection.publish(dynsec.CONTROL_TOPIC, payload, retain=False)
                return await answer
        finally:
            self._waiting.pop(batch, None)

    def _on_response(self, message: MqttMessage) -> None:
        """Resolve the batch an answer belongs to; anything else on the topic is ignored."""
        for batch, answers in _parse_answers(message.payload).items():
            waiting = self._waiting.get(batch)
            if waiting is not None and not waiting.done():
                waiting.set_result(answers)

    def _no_answer(self) -> BrokerOutcome:
        return BrokerOutcome(
            "no_answer",
            f"the broker did not confirm the login on {dynsec.CONTROL_TOPIC} within "
            f"{self._timeout_s:g} s (is it configured by `model-registry broker-config`?); if "
            f"the device cannot log in, {REGENERATE}, or give it its credentials on that broker "
            "yourself",
        )


def _parse_answers(payload: bytes) -> dict[str, list[dict[str, Any]]]:
    """The plugin's `responses`, grouped by correlationData; malformed answers are dropped."""
    if len(payload) > _MAX_RESPONSE_BYTES:
        return {}
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {}
    responses = body.get("responses") if isinstance(body, dict) else None
    grouped: dict[str, list[dict[str, Any]]] = {}
    for answer in responses if isinstance(responses, list) else []:
        if isinstance(answer, dict) and isinstance(answer.get("correlationData"), str):
            grouped.setdefault(answer["correlationData"], []).append(answer)
    return grouped
