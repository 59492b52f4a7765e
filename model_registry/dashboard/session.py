"""Signing in to the dashboard: the API token in a session cookie, and CSRF protection.

The browser keeps the token the operator typed in a cookie it never shows to scripts
(HttpOnly), sends only to this registry's own pages (SameSite=Strict), and only over TLS when
the dashboard is served over TLS (Secure). The token is checked on every request as a bearer
token is, so revoking it signs the browser out at once, on every replica.

A request that changes something and is authenticated by the cookie must also carry the
X-CSRF-Token header, a digest of the token that the page reads from `GET /ui/session`: another
site can make the browser send the cookie, but cannot read the digest. Such requests are also
refused when their Origin is another site's.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from model_registry.errors import PermissionDeniedError

COOKIE = "mr_session"
CSRF_HEADER = "X-CSRF-Token"
COOKIE_MAX_AGE_S = 12 * 3600  # the browser forgets the token after a working day
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_COOKIE_CHARS = 256  # tokens are 43 characters; anything much longer is not one


def csrf_token(token: str) -> str:
    """The CSRF value of a session: derived from its token, useless without the cookie."""
    return hashlib.sha256(b"model-registry csrf\0" + token.encode()).hexdigest()


def session_token(request: web.Request) -> str | None:
    """The API token of the request's session cookie, if it has one."""
    token = request.cookies.get(COOKIE)
    if not token or len(token) > MAX_COOKIE_CHARS:
        return None
    return token


def check_session_request(request: web.Request, token: str) -> None:
    """Refuse a cookie-authenticated change without the page's CSRF value, or from elsewhere."""
    check_origin(request)
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), csrf_token(token).encode()):
        raise PermissionDeniedError(
            f"missing or wrong {CSRF_HEADER} header: changes made with the dashboard's session"
            " need the value GET /ui/session returns"
        )


def check_origin(request: web.Request) -> None:
    """Refuse a request whose Origin header names another site than this registry."""
    origin = request.headers.get("Origin")
    if origin is None or request.method in SAFE_METHODS:
        return
    if origin != f"{_scheme(request)}://{request.host}":
        raise PermissionDeniedError(f"requests from {origin[:100]!r} are not accepted")


def set_session_cookie(response: web.StreamResponse, request: web.Request, token: str) -> None:
    """Give the browser the session cookie, Secure when the page came over TLS."""
    response.set_cookie(
        COOKIE,
        token,
        max_age=COOKIE_MAX_AGE_S,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=_scheme(request) == "https",
    )


def clear_session_cookie(response: web.StreamResponse, request: web.Request) -> None:
    """Make the browser forget the session cookie."""
    response.del_cookie(COOKIE, path="/", samesite="Strict", secure=_scheme(request) == "https")


def _scheme(request: web.Request) -> str:
    # Behind a TLS-terminating balancer the scheme the browser used is what it forwards.
    forwarded = request.headers.get("X-Forwarded-Proto", "").strip().lower()
    return forwarded if forwarded in ("http", "https") else request.scheme
