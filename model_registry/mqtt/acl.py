"""Who may read, write and subscribe to which topics (docs/protocol.md section 7), in one place.

One rule table serves both brokers: `dynsec` turns it into mosquitto dynamic-security roles and
`is_allowed` evaluates it for the embedded broker (tests/registry/test_broker_config.py compares
the verdicts with a real mosquitto running the generated files):

* the registry user reads and writes `{p}/#`, which also matches `{p}` itself;
* the `pattern` rules apply to every client, the registry included: a device reads its own
  `assignment` and `acks` and writes its own `state`, `events` and `telemetry`; `%u` is the
  connecting username, which for a device is its device id; rules with `%u` never match an
  anonymous client, the others do (anonymous clients only exist when the embedded broker
  allows them);
* a username that cannot be a topic level (`+`, `#`, `/`, ...) gets no access at all: we only
  ever issue device ids that are valid names;
* a subscription is refused unless every topic it can match is readable, so a device learns at
  subscribe time that `{p}/devices/+/assignment` is not for it instead of silently receiving less;
* a device connects with its device id as client id and nothing else (`client_id_allowed`), so
  it can never take over the registry's or another device's session;
* only the registry and a device's own `state` keep retained messages (`may_retain`): events and
  telemetry are not retained (section 7), and the embedded broker does not store them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from edge_protocol.fields import NAME_PATTERN
from edge_protocol.topics import Topics
from model_registry.errors import InvalidInputError

Action = Literal["read", "write", "subscribe"]
Access = Literal["read", "write", "readwrite"]
ACTIONS: tuple[Action, ...] = ("read", "write", "subscribe")
USERNAME = "%u"  # mosquitto's placeholder for the connecting client's username
_SAMPLE_ID = "device"  # any valid name: device topics are built with it, then it becomes %u
REGISTRY_SHARE_GROUP = "model-registry"  # the shared subscription group of registry replicas
_MAX_TOPIC_BYTES = 65535  # MQTT strings carry a 16-bit length


@dataclass(frozen=True)
class AclRule:
    """`access` to the topics matched by the filter `pattern` (`%u`: the connecting username)."""

    access: Access
    pattern: str

    def grants(self, action: Action) -> bool:
        """Whether this rule's access covers `action` (subscribing needs read access)."""
        needed = "write" if action == "write" else "read"
        return self.access in (needed, "readwrite")


@lru_cache(maxsize=16)
def registry_rules(topics: Topics) -> tuple[AclRule, ...]:
    """Rules of the registry user alone: everything under the prefix.

    Also its replicas' shared subscriptions (`$share/GROUP/FILTER`), which mosquitto checks
    as topics of their own.
    """
    return (
        AclRule("readwrite", f"{topics.prefix}/#"),
        AclRule("read", f"$share/{REGISTRY_SHARE_GROUP}/{topics.prefix}/#"),
    )


@lru_cache(maxsize=16)
def pattern_rules(topics: Topics) -> tuple[AclRule, ...]:
    """Rules every client gets: the shared documents, and a device's own topics via `%u`."""
    shared = (topics.root(1), topics.release(_SAMPLE_ID, 1), topics.artifact_chunk("0" * 64, 0))
    reads = [AclRule("read", _subtree(topics, sample)) for sample in shared]
    # What the registry sends one device: its assignment and the acknowledgements of its reports.
    for own_read in (topics.assignment, topics.acks):
        reads.append(AclRule("read", _own(topics, own_read(_SAMPLE_ID))))
    own_writes = (topics.state, topics.events, topics.telemetry)
    writes = [AclRule("write", _own(topics, build(_SAMPLE_ID))) for build in own_writes]
    return (*reads, *writes)


def is_allowed(
    topics: Topics, registry_user: str, username: str | None, topic: str, action: Action
) -> bool:
    """Whether `username` (None: anonymous) may `action` on `topic` (a filter for subscribe)."""
    if action not in ACTIONS:
        raise InvalidInputError(f"unknown ACL action {action!r}; expected one of {ACTIONS}")
    if not _well_formed(topic, filter_allowed=action == "subscribe"):
        return False
    levels = topic.split("/")
    rules = _rules_of(topics, registry_user, username)
    return any(rule.grants(action) and _covers(rule.pattern.split("/"), levels) for rule in rules)


def client_id_allowed(registry_user: str, username: str | None, client_id: str) -> bool:
    """Whether `username` (None: anonymous) may connect with `client_id`.

    A device uses its device id and nothing else. The registry's account is the administrator's
    and may use any id (its tools run beside the registry). An anonymous client, where allowed,
    gets only ids that cannot name a device, such as one the broker assigns.
    """
    if username == registry_user:
        return True
    if username is None:
        return not is_username(client_id)
    return is_username(username) and client_id == username


def may_retain(topics: Topics, registry_user: str, username: str | None, topic: str) -> bool:
    """Whether a retained publish by `username` on `topic` is kept (if it may write there)."""
    if username == registry_user:
        return True
    return username is not None and is_username(username) and topic == topics.state(username)


def device_rules(topics: Topics, device_id: str) -> tuple[AclRule, ...]:
    """The pattern rules that name the device (`%u`), written out for `device_id`."""
    check_username(device_id)
    return tuple(
        AclRule(rule.access, rule.pattern.replace(USERNAME, device_id))
        for rule in pattern_rules(topics)
        if USERNAME in rule.pattern
    )


def shared_rules(topics: Topics) -> tuple[AclRule, ...]:
    """The pattern rules every client gets whatever its name: the shared documents."""
    return tuple(rule for rule in pattern_rules(topics) if USERNAME not in rule.pattern)


def _rules_of(topics: Topics, registry_user: str, username: str | None) -> list[AclRule]:
    """The rules that apply to one client, with `%u` replaced by its username."""
    if username is None:
        return [rule for rule in pattern_rules(topics) if USERNAME not in rule.pattern]
    if not is_username(username):
        return []
    rules = list(registry_rules(topics)) if username == registry_user else []
    for rule in pattern_rules(topics):
        rules.append(AclRule(rule.access, rule.pattern.replace(USERNAME, username)))
    return rules


def _covers(rule: Sequence[str], wanted: Sequence[str]) -> bool:
    """Whether every topic matched by filter `wanted` is matched by filter `rule`.

    For a plain topic this is ordinary MQTT matching. A rule `a/#` also covers `a` itself.
    """
    for index, level in enumerate(rule):
        if level == "#":
            return True
        if index >= len(wanted) or wanted[index] == "#":
            return False
        # A `+` in the rule takes any single level; a `+` in `wanted` needs one in the rule.
        if level != "+" and wanted[index] != level:
            return False
    return len(wanted) == len(rule)


def _well_formed(topic: str, *, filter_allowed: bool) -> bool:
    """Whether `topic` is a valid topic name, or a valid filter if `filter_allowed`."""
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates cannot travel in an MQTT string
        return False
    if not 0 < size <= _MAX_TOPIC_BYTES or "\0" in topic:
        return False
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and not (filter_allowed and level == "#" and index == len(levels) - 1):
            return False
        if "+" in level and not (filter_allowed and level == "+"):
            return False
    return True


def _subtree(topics: Topics, sample: str) -> str:
    """`{p}/<first level of sample>/#`: the whole family a sample topic belongs to."""
    first_level = sample[len(topics.prefix) + 1 :].split("/", maxsplit=1)[0]
    return f"{topics.prefix}/{first_level}/#"


def _own(topics: Topics, sample: str) -> str:
    """A device topic built for the sample id, with the id replaced by `%u`."""
    levels = sample[len(topics.prefix) + 1 :].split("/")
    levels[levels.index(_SAMPLE_ID)] = USERNAME
    return "/".join((topics.prefix, *levels))


def is_username(value: str) -> bool:
    """Whether `value` is a valid name (device id), usable in ACL, password file and topics."""
    # fullmatch: NAME_PATTERN ends in `$`, which with match() also accepts a trailing newline.
    return NAME_PATTERN.fullmatch(value) is not None


def check_username(username: str) -> None:
    """Raise InvalidInputError unless `username` can stand in an ACL file and a topic level."""
    if not is_username(username):
        raise InvalidInputError(
            f"MQTT username {username!r} must be a valid name (letters, digits, '.', '_', '-')"
        )
