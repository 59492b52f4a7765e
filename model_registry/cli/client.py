"""A small synchronous client of the registry's REST API, for the CLI.

The standard library is enough here: one request at a time, JSON in and out, and a multipart
encoder for uploads. API errors come back as `ApiError` carrying the server's own sentence.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_registry.config import load_config
from model_registry.errors import RegistryError
from model_registry.home import CLI_TOKEN_FILE, SERVE_FILE

URL_ENV = "MODEL_REGISTRY_URL"
TOKEN_ENV = "MODEL_REGISTRY_TOKEN"  # noqa: S105 - a variable name
TIMEOUT_S = 600  # a push quantizes and evaluates on the server before answering


class ApiError(RegistryError):
    """The API answered with an error (`status`), or could not be reached (no status)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConnectionLostError(ApiError):
    """The request went out but no answer came back: it may or may not have taken effect."""


@dataclass(frozen=True)
class ApiClient:
    """Where the API is and which token to send."""

    url: str
    token: str | None
    # Said when the API cannot be reached: where the URL came from, when that explains it.
    unreachable_hint: str = ""

    @classmethod
    def locate(cls, url: str | None, token: str | None, home: Path | None) -> ApiClient:
        """Find the API from flags, then the environment, then the registry home."""
        url = url or os.environ.get(URL_ENV)
        token = token or os.environ.get(TOKEN_ENV)
        hint = ""
        if home is not None and (home / "registry.toml").exists():
            config = load_config(home)
            served = _served_url(home)
            if not url and not served:
                # No serve.json: nothing runs from this home, so the address is only the default.
                hint = (
                    f" (no serve is running from {home}: start it with model-registry serve "
                    f"--home {home}, or pass --url)"
                )
            url = url or served or config.api.public_url or f"http://{config.api.listen}"
            token_file = home / CLI_TOKEN_FILE
            if token is None and token_file.exists():
                token = token_file.read_text().strip()
        if not url:
            where = "" if home is None else f"{home} is not a registry home (no registry.toml); "
            raise ApiError(
                f"no registry to talk to: {where}pass --url, set {URL_ENV}, "
                "or point --home at a registry home"
            )
        if not url.startswith(("http://", "https://")):
            raise ApiError(f"the registry URL {url!r} must start with http:// or https://")
        return cls(url.rstrip("/"), token, hint)

    def get(self, path: str) -> Any:
        """GET a JSON document."""
        return self._send("GET", path, None, {})

    def post_json(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Any:
        """POST a JSON object (with extra `headers`)."""
        return self._send(
            "POST",
            path,
            json.dumps(body).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )

    def patch_json(self, path: str, body: dict[str, Any]) -> Any:
        """PATCH with a JSON object."""
        return self._send(
            "PATCH", path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )

    def delete(self, path: str) -> Any:
        """DELETE, returning what the API answers."""
        return self._send("DELETE", path, None, {})

    def post_files(self, path: str, fields: dict[str, bytes]) -> Any:
        """POST a multipart form whose fields are all sent as files."""
        boundary = "----model-registry-" + secrets.token_hex(12)
        body = bytearray()
        for name, data in fields.items():
            body += f"--{boundary}\r\n".encode()
            body += f'Content-Disposition: form-data; name="{name}"; filename="{name}"\r\n'.encode()
            body += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        content_type = f"multipart/form-data; boundary={boundary}"
        return self._send("POST", path, bytes(body), {"Content-Type": content_type})

    def _send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Any:
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        # `locate` admits only http(s) URLs, so no file: or custom scheme reaches urlopen.
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            raise ApiError(_error_text(e), e.code) from e
        except urllib.error.URLError as e:  # urllib wraps what fails before the request is out
            raise ApiError(
                f"cannot reach the registry at {self.url}: {e.reason}{self.unreachable_hint}"
            ) from e
        except (http.client.HTTPException, OSError) as e:  # sent, then the answer was lost
            raise ConnectionLostError(
                f"the connection to the registry at {self.url} dropped before it answered "
                f"({e or type(e).__name__})"
            ) from e


def _served_url(home: Path) -> str | None:
    try:
        endpoint = json.loads((home / SERVE_FILE).read_text())
    except (OSError, ValueError):
        return None
    url = endpoint.get("api_url") if isinstance(endpoint, dict) else None
    return url if isinstance(url, str) else None


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        message = json.loads(error.read()).get("error")
    except (ValueError, AttributeError):
        message = None
    return str(message or f"the registry answered {error.code} {error.reason}")
