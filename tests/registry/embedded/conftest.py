"""One embedded broker per test module, and the registry's login on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.registry.embedded.broker_thread import (
    REGISTRY,
    BrokerThread,
)


@pytest.fixture(scope="module")
def embedded() -> Iterator[BrokerThread]:
    """One embedded broker for the module; tests use fresh device ids so they do not interact."""
    broker = BrokerThread().start()
    yield broker
    broker.stop()


@pytest.fixture
def registry(embedded: BrokerThread) -> tuple[str, str]:
    """The registry's credentials (a fresh password each test: only the hash is stored)."""
    return embedded.add_user(REGISTRY)
