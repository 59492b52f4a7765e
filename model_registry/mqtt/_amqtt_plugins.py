"""amqtt plugins of the embedded broker: passwords via `verify_password`, topics via `acl`.

amqtt 0.12 loads plugins named by dotted class path in the broker config's `plugins` section and
fills each plugin's `Config` dataclass from that entry, so the policy object travels in there.
"""

from __future__ import annotations

import hmac
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from edge_protocol.topics import Topics
from model_registry.mqtt.acl import Action, client_id_allowed, is_allowed, may_retain
from model_registry.mqtt.credentials import verify_password

logger = logging.getLogger(__name__)

# Returns the stored mosquitto hash of a username, or None; may be a coroutine function.
PasswordLookup = Callable[[str], "str | Awaitable[str | None] | None"]

# amqtt's topic actions (Action enum values) mapped to the ACL's.
_ACL_ACTIONS: dict[str, Action] = {"publish": "write", "subscribe": "subscribe", "receive": "read"}


@dataclass(frozen=True)
class BrokerPolicy:
    """Who may connect to the embedded broker and what each client may do."""

    topics: Topics
    registry_user: str
    password_lookup: PasswordLookup
    allow_anonymous: bool = False
    registry_password: str | None = None  # lets the in-process registry in without a stored hash

    async def authenticate(self, username: str | None, password: str | None) -> bool:
        """Whether a CONNECT with these credentials is accepted."""
        if username is None:
            return self.allow_anonymous and password is None
        if password is None:
            return False
        if self._is_registry_password(username, password):
            return True
        stored = await self._stored_hash(username)
        return stored is not None and verify_password(password, stored)

    def may(self, username: str | None, topic: str, action: Action) -> bool:
        """Whether `username` may `action` on `topic` (see acl.is_allowed)."""
        return is_allowed(self.topics, self.registry_user, username, topic, action)

    def may_use_client_id(self, username: str | None, client_id: str) -> bool:
        """Whether an authenticated `username` may use `client_id` (acl.client_id_allowed)."""
        return client_id_allowed(self.registry_user, username, client_id)

    def may_retain(self, username: str | None, topic: str) -> bool:
        """Whether a retained publish of `username` on `topic` is stored (acl.may_retain)."""
        return may_retain(self.topics, self.registry_user, username, topic)

    def _is_registry_password(self, username: str, password: str) -> bool:
        if username != self.registry_user or self.registry_password is None:
            return False
        return hmac.compare_digest(password.encode(), self.registry_password.encode())

    async def _stored_hash(self, username: str) -> str | None:
        try:
            found = self.password_lookup(username)
            if inspect.isawaitable(found):
                found = await found
        # A failing lookup (storage down) must refuse this client, not kill amqtt's handler.
        except Exception:
            logger.warning("password lookup for MQTT user %r failed", username, exc_info=True)
            return None
        return found if isinstance(found, str) else None


class EdgeAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """Checks CONNECT credentials against the registry's password hashes."""

    @dataclass
    class Config:
        """Filled by amqtt from the plugin's entry in the broker config."""

        policy: Any = None

    async def authenticate(self, *, session: Any) -> bool:
        """Accept or refuse a CONNECT; a will on a topic the client may not write is dropped."""
        policy = _policy(self)
        if not await policy.authenticate(session.username, session.password):
            return False
        # amqtt publishes wills without its publish check; mosquitto 2.0 accepts such a client
        # and silently drops the will, and so do we.
        if session.will_flag and not policy.may(
            session.username, session.will_topic or "", "write"
        ):
            logger.warning(
                "dropping the will of %r on %r: not writable", session.username, session.will_topic
            )
            session.will_flag = False
        return True


class EdgeTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """Authorizes publish, subscribe and delivery with the rules of docs/protocol.md section 7."""

    @dataclass
    class Config:
        """Filled by amqtt from the plugin's entry in the broker config."""

        policy: Any = None

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool:
        """Whether the session's user may perform `action` on `topic`."""
        acl_action = _ACL_ACTIONS.get(str(action))
        if session is None or topic is None or acl_action is None:
            return False
        return _policy(self).may(session.username, topic, acl_action)


def _policy(plugin: Any) -> BrokerPolicy:
    policy = plugin.context.config.policy
    if not isinstance(policy, BrokerPolicy):
        raise TypeError("the embedded broker's plugins need a BrokerPolicy in their config")
    return policy
