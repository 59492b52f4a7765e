"""Routing what arrives from the broker: roots, the assignment, releases, chunks and acks.

Every document is verified by `edge_protocol.TrustedState` before anything acts on it, and the
trust high-water marks are persisted before the updater starts work. Rejections become
`rejected` events; nothing a broker sends can stop the agent from serving, and a message whose
handling fails (a full disk, a bug) is reported and never ends the connection.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge_agent.errors import AgentError, MqttDisconnectedError, MqttSubscribeError
from edge_agent.mqtt import AgentMqtt, Message
from edge_agent.update.updater import INTERNAL_ERROR
from edge_protocol import Assignment, Envelope, RejectedError
from edge_protocol.errors import ExpiredError, FormatError, TopicError
from edge_protocol.messages import EventKind
from edge_protocol.topics import KIND_ACKS, KIND_ARTIFACT, KIND_ASSIGNMENT, KIND_RELEASE, KIND_ROOT

if TYPE_CHECKING:
    from edge_agent.agent import Agent

log = logging.getLogger(__name__)
ROOT_KEY = "trust/root.json"  # the key of the root's writes in the updater's PendingWrites


class Subscriptions:
    """Subscribes through whichever connection is current, and remembers what to renew.

    `subscribe_many` topics are wanted for good: renewed on every connection, so a drop in the
    middle of subscribing loses nothing. `subscribe_live` acts on the current connection only
    and leaves renewing to the caller (the chunk fetcher, which knows what the session holds).
    """

    def __init__(self) -> None:
        self.client: AgentMqtt | None = None
        self.wanted: set[str] = set()

    async def subscribe(self, topic_filter: str) -> None:
        """Subscribe now if connected, and again after every reconnection."""
        await self.subscribe_many([topic_filter])

    async def subscribe_many(self, topic_filters: Sequence[str]) -> None:
        """Subscribe to several filters (kept across reconnections)."""
        self.wanted.update(topic_filters)
        if self.client is None:
            return
        try:
            await self.client.subscribe(*topic_filters)
        except MqttDisconnectedError as e:  # still wanted: the next connection subscribes
            log.info("subscribing when the connection is back: %s", e)

    async def unsubscribe(self, topic_filter: str) -> None:
        """Stop following a filter, now if connected and on every later connection."""
        await self.unsubscribe_many([topic_filter])

    async def unsubscribe_many(self, topic_filters: Sequence[str]) -> None:
        """Stop following several filters."""
        self.wanted.difference_update(topic_filters)
        if self.client is None:
            return
        try:
            await self.client.unsubscribe(*topic_filters)
        except MqttDisconnectedError as e:
            log.info("could not unsubscribe (%s); the next connection does not renew them", e)

    async def subscribe_live(self, topic_filters: Sequence[str]) -> None:
        """Subscribe on the current connection only; MqttDisconnectedError without one."""
        await self._live().subscribe(*topic_filters)

    async def unsubscribe_live(self, topic_filters: Sequence[str]) -> None:
        """Unsubscribe on the current connection only; MqttDisconnectedError without one."""
        await self._live().unsubscribe(*topic_filters)

    async def renew(self, client: AgentMqtt) -> None:
        """Use a new connection and subscribe it to everything still wanted."""
        self.client = client
        if self.wanted:
            await client.subscribe(*sorted(self.wanted))

    def _live(self) -> AgentMqtt:
        if self.client is None:
            raise MqttDisconnectedError("not connected to the broker")
        return self.client


class Dispatcher:
    """Handles connection events and every message for the agent."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._pending_roots: dict[int, bytes] = {}
        self.handler_errors = 0  # messages whose handling raised, since start

    async def connected(self, client: AgentMqtt) -> None:
        """On each connection: follow the trust and assignment topics, report, resume."""
        agent = self._agent
        topics, device = agent.topics, agent.config.device_id
        await agent.subscriptions.subscribe_many([topics.all_roots(), topics.assignment(device)])
        await agent.subscriptions.renew(client)
        agent.link.connected(session_present=client.session_present)
        registry_acks = await self._follow_acks(client)
        await agent.reporter.connected(client, registry_acks=registry_acks)

    async def _follow_acks(self, client: AgentMqtt) -> bool:
        """Subscribe to the registry's acks, before anything is sent that they would answer.

        A broker whose access rules predate acks refuses the subscription: the connection
        goes on, and the broker's PUBACK is then what deletes a spooled message.
        """
        topic = self._agent.topics.acks(self._agent.config.device_id)
        try:
            await client.subscribe(topic)
        except MqttSubscribeError as e:
            log.warning("%s; the broker's acknowledgement has to do", e)
            return False
        return True

    def disconnected(self, error: Exception) -> None:
        """Forget the lost connection."""
        self._agent.subscriptions.client = None
        self._agent.link.disconnected()
        self._agent.reporter.disconnected()

    async def handler_failed(self, message: Message, error: Exception) -> None:
        """A bug met while handling a message (logged by the MQTT loop): report it upstream."""
        self.handler_errors += 1
        detail = f"handling a message on {message.topic} failed: {error!r}"
        await self._agent.reporter.event(EventKind.FAILED, reason=INTERNAL_ERROR, detail=detail)

    async def handle(self, message: Message) -> None:
        """Route one message by its topic."""
        try:
            ref = self._agent.topics.parse(message.topic)
        except TopicError:
            log.debug("ignoring a message on %s", message.topic)
            return
        if ref.kind == KIND_ARTIFACT:
            self._agent.mqtt_fetcher.feed(message.topic, message.payload)
        elif ref.kind == KIND_RELEASE and ref.number is not None:
            self._agent.updater.on_release(ref.name, ref.number, message.payload)
        elif ref.kind == KIND_ROOT and ref.number is not None and message.payload:
            await self._on_root(ref.number, message.payload)
        elif ref.kind == KIND_ASSIGNMENT and ref.name == self._agent.config.device_id:
            await self._on_assignment(message.payload)
        elif ref.kind == KIND_ACKS and ref.name == self._agent.config.device_id:
            await self._agent.reporter.on_ack(message.payload)

    async def _on_root(self, version: int, payload: bytes) -> None:
        trust = self._agent.trust
        if version <= trust.root.version:
            return
        self._pending_roots[version] = payload
        # Roots are applied strictly in order; a later one waits for the versions between.
        while (nxt := trust.root.version + 1) in self._pending_roots:
            data = self._pending_roots.pop(nxt)
            try:
                trust.update_root(data)
            except RejectedError as e:
                await self._agent.reporter.event(
                    EventKind.REJECTED, reason=e.reason, detail=f"root v{nxt}: {e}"
                )
                return
            log.info("trusting root version %d", nxt)
            await self._save_root(nxt, data)
            await self._agent.reporter.publish_state()

    async def _save_root(self, version: int, data: bytes) -> None:
        """Keep the newest trusted root on disk; a refused write is retried until it lands."""
        save = functools.partial(self._agent.states.save_root, data)
        refused = await self._agent.updater.writes.write(ROOT_KEY, save)
        if refused is not None:
            detail = f"root v{version} is trusted but not yet saved ({refused}); retrying"
            await self._agent.reporter.event(EventKind.FAILED, reason=refused.reason, detail=detail)

    async def _assignment_rejected(self, payload: bytes, error: RejectedError) -> None:
        """Report the refusal, per followed model it names when the registry signed it."""
        log.warning("rejected an assignment: %s", error)
        agent = self._agent
        named = _signed_models(payload, error, agent.config.device_id)
        followed = [
            (model, version, seq) for model, version, seq in named if agent.config.follows(model)
        ]
        if not followed:
            await agent.reporter.event(
                EventKind.REJECTED, reason=error.reason, detail=f"assignment: {error}"
            )
        for model, version, seq in followed:
            await agent.reporter.event(
                EventKind.REJECTED, model=model, version=version, reason=error.reason,
                detail=f"assignment {seq}: {error}", seq=seq,
            )  # fmt: skip

    async def _on_assignment(self, payload: bytes) -> None:
        if not payload:
            return
        agent = self._agent
        try:
            assignment = agent.trust.verify_assignment(payload)
        except RejectedError as e:
            await self._assignment_rejected(payload, e)
            return
        try:
            await agent.updater.accept(assignment, agent.trust.assignment_digest)
        except AgentError as e:
            log.error("cannot apply assignment %d: %s", assignment.seq, e)


def _signed_models(
    payload: bytes, error: RejectedError, device_id: str
) -> list[tuple[str, int, int]]:
    """(model, version, seq) of an assignment refused only for its age, else nothing.

    An expired assignment passed the signature check before its expiry was looked at, so what
    it names comes from the registry; any other refusal may be a forgery, whose claims the
    device must not repeat upstream.
    """
    if not isinstance(error, ExpiredError):
        return []
    try:
        assignment = Assignment.from_dict(Envelope.from_bytes(payload).signed)
    except (FormatError, RejectedError):
        return []
    if assignment.device_id != device_id:
        return []
    return [(name, m.version, assignment.seq) for name, m in sorted(assignment.models.items())]
