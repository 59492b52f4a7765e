"""Shared fixtures: real mosquitto brokers and real ONNX models (machinery in tests/support)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.broker import (
    Broker,
    BrokerFactory,
    MosquittoNotFoundError,
    RetainedMessages,
    find_mosquitto,
    find_mosquitto_passwd,
    start_auth_broker,
    start_plain_broker,
    start_tls_broker,
)
from tests.support.postgres import (
    PostgresUnavailableError,
    connect,
    drop_stale_schemas,
    server_url,
)

if TYPE_CHECKING:
    from tests.support.models import ModelSet


def _require_mosquitto() -> None:
    """Fail (never skip) with the install command when the broker binaries are missing."""
    try:
        find_mosquitto()
        find_mosquitto_passwd()
    except MosquittoNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def mosquitto_plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Session broker: anonymous, plain TCP on 127.0.0.1."""
    _require_mosquitto()
    broker = start_plain_broker(tmp_path_factory.mktemp("mosquitto-plain"))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mosquitto_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Session broker: passwords for registry/dev-a/dev-b and the edge ACL, plain TCP."""
    _require_mosquitto()
    broker = start_auth_broker(tmp_path_factory.mktemp("mosquitto-auth"))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mosquitto_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Session broker: TLS with a generated CA, passwords and the edge ACL."""
    _require_mosquitto()
    broker = start_tls_broker(tmp_path_factory.mktemp("mosquitto-tls"))
    yield broker
    broker.stop()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Per-test brokers that may be stopped and restarted; all are stopped afterwards."""
    _require_mosquitto()
    factory = BrokerFactory(tmp_path / "brokers")
    yield factory
    factory.close()


@pytest.fixture
def retained() -> Iterator[RetainedMessages]:
    """Retained messages deleted after the test, so they cannot leak into later tests."""
    messages = RetainedMessages()
    yield messages
    messages.clear()


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> ModelSet:
    """A trained MLP classifier and gradient-boosting regressor exported to ONNX."""
    # Imported here so suites that never ask for models do not pay ~2 s for scikit-learn.
    from tests.support.models import build_models

    return build_models(tmp_path_factory.mktemp("onnx-models"))


@pytest.fixture(scope="session")
def postgres() -> str:
    """The test PostgreSQL server's URL; fails (never skips) when it cannot be reached.

    Drops the schemas test runs that died left behind over an hour ago.
    """
    try:
        conn = connect()
    except PostgresUnavailableError as exc:
        unreachable = str(exc)
    else:
        with conn:
            drop_stale_schemas(conn)
        return server_url()
    pytest.fail(unreachable, pytrace=False)  # outside the handler: one message, no traceback
