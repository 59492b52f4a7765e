"""Bearer-token authentication and role checks for the API.

Each route declares the smallest role it needs when it is registered (`require`); routes that
declare none are public (`/healthz`, the OpenAPI document). Artifact downloads also accept a
device's own MQTT credentials over HTTP Basic, so devices on the HTTP transport need no token.
The dashboard's session cookie (`model_registry.dashboard.session`) is taken in place of a
bearer token, for requests without an Authorization header.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import timedelta

from aiohttp import web

from model_registry.api.errors import Handler
from model_registry.api.keys import CTX_KEY, PRINCIPAL_KEY
from model_registry.dashboard.session import check_session_request, session_token
from model_registry.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from model_registry.mqtt.credentials import verify_password
from model_registry.services.context import RegistryContext
from model_registry.tokens import hash_token, role_allows

# The handlers' modules import the keys from here, beside `require`.
__all__ = [
    "CTX_KEY", "DEVICE_OK", "PRINCIPAL_KEY", "REQUIRED_ROLE", "TOKEN_USE_RESOLUTION",
    "auth_middleware", "require",
]  # fmt: skip
TOKEN_USE_RESOLUTION = timedelta(seconds=60)  # how exactly a token's `last_used` is kept
REQUIRED_ROLE: dict[Handler, str] = {}
DEVICE_OK: set[Handler] = set()


def require(role: str, *, devices: bool = False) -> Callable[[Handler], Handler]:
    """Mark a handler as needing at least `role`; `devices` also admits device credentials."""

    def mark(handler: Handler) -> Handler:
        REQUIRED_ROLE[handler] = role
        if devices:
            DEVICE_OK.add(handler)
        return handler

    return mark


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Reject requests whose credentials do not reach the route's role."""
    route_handler = request.match_info.route.handler
    required = REQUIRED_ROLE.get(route_handler)
    if required is None:
        return await handler(request)
    ctx = request.app[CTX_KEY]
    header = request.headers.get("Authorization", "")
    if header.startswith("Basic ") and route_handler in DEVICE_OK:
        request[PRINCIPAL_KEY] = await _device_principal(ctx, header[6:])
        return await handler(request)
    if not header and (token := session_token(request)) is not None:
        # The dashboard's session cookie stands for the bearer token, with CSRF checks.
        check_session_request(request, token)
        header = f"Bearer {token}"
    role, name = await _token_role(ctx, header)
    if not role_allows(role, required):
        raise PermissionDeniedError(f"this needs the {required} role; the token has {role}")
    request[PRINCIPAL_KEY] = name
    return await handler(request)


async def token_role(ctx: RegistryContext, header: str) -> tuple[str, str]:
    """The role and principal of an `Authorization: Bearer` header; AuthenticationError."""
    return await _token_role(ctx, header)


async def _token_role(ctx: RegistryContext, header: str) -> tuple[str, str]:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("missing bearer token: send 'Authorization: Bearer <token>'")
    record = await ctx.storage.find_token(hash_token(token.strip()))
    if record is None:
        raise AuthenticationError("invalid or revoked token")
    now = ctx.clock()
    # A write per TOKEN_USE_RESOLUTION_S per token at most, not one per request.
    if record.last_used is None or now - record.last_used >= TOKEN_USE_RESOLUTION:
        await ctx.storage.touch_token(record.token_id, now)
    return record.role, f"token:{record.name}"


async def _device_principal(ctx: RegistryContext, encoded: str) -> str:
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as e:
        raise AuthenticationError("malformed Basic credentials") from e
    try:
        device = await ctx.storage.get_device(user)
    except NotFoundError as e:
        raise AuthenticationError("unknown device or wrong password") from e
    if not verify_password(password, device.password_hash):
        raise AuthenticationError("unknown device or wrong password")
    return f"device:{device.device_id}"
