"""Registry fixtures: a real home made by `init`, its context, and the API on a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from model_registry.config import load_config
from model_registry.home import InitResult, init_home
from model_registry.services.context import RegistryContext
from model_registry.storage import open_storage


@dataclass
class Api:
    """A registry API under test: its client, context and admin token."""

    client: TestClient
    ctx: RegistryContext
    admin_token: str

    def auth(self, token: str | None = None) -> dict[str, str]:
        """Authorization header for `token` (default: the admin token)."""
        return {"Authorization": f"Bearer {token or self.admin_token}"}


@pytest.fixture
async def registry_home(tmp_path: Path) -> InitResult:
    """A freshly initialised registry home."""
    return await init_home(tmp_path / "registry-home")


@pytest.fixture
async def api(registry_home: InitResult) -> AsyncIterator[Api]:
    """The registry API (without MQTT) over a real socket."""
    from model_registry.api.app import create_app
    from model_registry.server import make_context

    config = load_config(registry_home.home)
    storage = open_storage(config.database_location)
    await storage.open()
    ctx = make_context(config, storage)
    client = TestClient(TestServer(create_app(ctx)))
    await client.start_server()
    try:
        yield Api(client, ctx, registry_home.admin_token)
    finally:
        await client.close()
        await storage.close()
