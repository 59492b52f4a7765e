"""The keys under which the application and each request carry the registry's state.

A module of their own so that the error middleware and the authentication layer, which both
read them, need not import each other.
"""

from __future__ import annotations

from aiohttp import web

from model_registry.services.context import RegistryContext

CTX_KEY = web.AppKey("registry_context", RegistryContext)
PRINCIPAL_KEY = web.RequestKey("principal", str)  # who made the request, for audit fields
