"""Routing what arrives from the broker: roots, the assignment, releases, chunks and acks.

Every document is verified by `edge_protocol.TrustedState` before anything acts on it, and the
trust high-water marks are persisted before the updater starts work. Rejections become
`rejected` events; nothing a broker sends can stop the agent from serving, and a message whose
handling fails (a full disk, a bug) is reported and never ends the connection.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_agent.errors import AgentError, MqttDisconnectedError, MqttSubscribeError
from edge_agent.mqtt import AgentMqtt, Message
from edge_agent.mqtt.link import LinkState
from edge_agent.storage.state import StateStore
from edge_agent.update.fetch import MqttChunkFetcher
from edge_agent.update.updater import INTERNAL_ERROR, Updater
from edge_agent.uplink.reporting import Reporter
from edge_protocol import Assignment, Envelope, RejectedError, Topics, TrustedState
from edge_protocol.errors import ExpiredError, FormatError, TopicError
from edge_protocol.messages import EventKind
from edge_protocol.topics import KIND_ACKS, KIND_ARTIFACT, KIND_ASSIGNMENT, KIND_RELEASE, KIND_ROOT

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


@dataclass(frozen=True)
class Device:
    """Who the messages are for: the device's id, its topics and the models it follows."""

    device_id: str
    topics: Topics
    follows: Callable[[str], bool]


class ExperimentFollower(Protocol):
    """What the dispatcher hands experiments (edge_agent/experiments/install.py)."""

    def on_release(self, model: str, version: int, payload: bytes) -> None:
        """A release document from the broker."""

    async def apply(self, assignment: Assignment, envelope: bytes | None = None) -> None:
        """An accepted assignment, and its signed bytes."""


class Dispatcher:
    """Handles connection events and every message for the agent.

    Its collaborators are passed in, each for what the dispatcher does with it: the trust
    verifies documents, the updater acts on them, the reporter answers, the subscriptions and
    the link follow the connection, the chunk fetcher takes artifact chunks, and `states`
    keeps the newest root on disk.
    """

    def __init__(
        self,
        device: Device,
        *,
        trust: TrustedState,
        updater: Updater,
        reporter: Reporter,
        subscriptions: Subscriptions,
        link: LinkState,
        chunks: MqttChunkFetcher,
        states: StateStore,
        experiments: ExperimentFollower | None = None,
    ) -> None:
        self._device = device
        self._trust = trust
        self._updater = updater
        self._reporter = reporter
        self._subscriptions = subscriptions
        self._link = link
        self._chunks = chunks
        self._states = states
        self._experiments = experiments
        self._pending_roots: dict[int, bytes] = {}
        self.handler_errors = 0  # messages whose handling raised, since start

    async def connected(self, client: AgentMqtt) -> None:
        """On each connection: follow the trust and assignment topics, report, resume."""
        topics, device = self._device.topics, self._device.device_id
        await self._subscriptions.subscribe_many([topics.all_roots(), topics.assignment(device)])
        await self._subscriptions.renew(client)
        self._link.connected(session_present=client.session_present)
        registry_acks = await self._follow_acks(client)
        await self._reporter.connected(client, registry_acks=registry_acks)

    async def _follow_acks(self, client: AgentMqtt) -> bool:
        """Subscribe to the registry's acks, before anything is sent that they would answer.

        A broker whose access rules predate acks refuses the subscription: the connection
        goes on, and the broker's PUBACK is then what deletes a spooled message.
        """
        topic = self._device.topics.acks(self._device.device_id)
        try:
            await client.subscribe(topic)
        except MqttSubscribeError as e:
            log.warning("%s; the broker's acknowledgement has to do", e)
            return False
        return True

    def disconnected(self, error: Exception) -> None:
        """Forget the lost connection."""
        self._subscriptions.client = None
        self._link.disconnected()
        self._reporter.disconnected()

    async def handler_failed(self, message: Message, error: Exception) -> None:
        """A bug met while handling a message (logged by the MQTT loop): report it upstream."""
        self.handler_errors += 1
        detail = f"handling a message on {message.topic} failed: {error!r}"
        await self._reporter.event(EventKind.FAILED, reason=INTERNAL_ERROR, detail=detail)

    async def handle(self, message: Message) -> None:
        """Route one message by its topic."""
        try:
            ref = self._device.topics.parse(message.topic)
        except TopicError:
            log.debug("ignoring a message on %s", message.topic)
            return
        device_id = self._device.device_id
        if ref.kind == KIND_ARTIFACT:
            self._chunks.feed(message.topic, message.payload)
        elif ref.kind == KIND_RELEASE and ref.number is not None:
            self._updater.on_release(ref.name, ref.number, message.payload)
            if self._experiments is not None:  # a candidate's release comes the same way
                self._experiments.on_release(ref.name, ref.number, message.payload)
        elif ref.kind == KIND_ROOT and ref.number is not None and message.payload:
            await self._on_root(ref.number, message.payload)
        elif ref.kind == KIND_ASSIGNMENT and ref.name == device_id:
            await self._on_assignment(message.payload)
        elif ref.kind == KIND_ACKS and ref.name == device_id:
            await self._reporter.on_ack(message.payload)

    async def _on_root(self, version: int, payload: bytes) -> None:
        trust = self._trust
        if version <= trust.root.version:
            return
        self._pending_roots[version] = payload
        # Roots are applied strictly in order; a later one waits for the versions between.
        while (nxt := trust.root.version + 1) in self._pending_roots:
            data = self._pending_roots.pop(nxt)
            try:
                trust.update_root(data)
            except RejectedError as e:
                await self._reporter.event(
                    EventKind.REJECTED, reason=e.reason, detail=f"root v{nxt}: {e}"
                )
                return
            log.info("trusting root version %d", nxt)
            await self._save_root(nxt, data)
            await self._reporter.publish_state()

    async def _save_root(self, version: int, data: bytes) -> None:
        """Keep the newest trusted root on disk; a refused write is retried until it lands."""
        save = functools.partial(self._states.save_root, data)
        # The updater's PendingWrites: one retry schedule for every state file of the device.
        refused = await self._updater.writes.write(ROOT_KEY, save)
        if refused is not None:
            detail = f"root v{version} is trusted but not yet saved ({refused}); retrying"
            await self._reporter.event(EventKind.FAILED, reason=refused.reason, detail=detail)

    async def _assignment_rejected(self, payload: bytes, error: RejectedError) -> None:
        """Report the refusal, per followed model it names when the registry signed it."""
        log.warning("rejected an assignment: %s", error)
        named = _signed_models(payload, error, self._device.device_id)
        followed = [
            (model, version, seq) for model, version, seq in named if self._device.follows(model)
        ]
        if not followed:
            await self._reporter.event(
                EventKind.REJECTED, reason=error.reason, detail=f"assignment: {error}"
            )
        for model, version, seq in followed:
            await self._reporter.event(
                EventKind.REJECTED, model=model, version=version, reason=error.reason,
                detail=f"assignment {seq}: {error}", seq=seq,
            )  # fmt: skip

    async def _on_assignment(self, payload: bytes) -> None:
        if not payload:
            return
        try:
            # Moves the trust's high-water mark, which the updater records before acting.
            assignment = self._trust.verify_assignment(payload)
        except RejectedError as e:
            await self._assignment_rejected(payload, e)
            return
        try:
            await self._updater.accept(assignment)
        except AgentError as e:
            log.error("cannot apply assignment %d: %s", assignment.seq, e)
        if self._experiments is not None:  # the experiments it names, beside the control
            await self._experiments.apply(assignment, payload)


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
