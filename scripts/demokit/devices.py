"""The agents as the demo sees them: HTTP, their status, and live traffic."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demokit.common import (
    HOST,
    MODEL,
    StepError,
    shown_path,
)
from demokit.processes import Tracked

# ------------------------------------------------------------------------------------ agents


@dataclass
class Response:
    """An HTTP answer as curl -i would show it."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def http(url: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> Response | None:
    """GET (or POST a JSON body) to an agent; None when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - http URL
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            return Response(answer.status, answer.reason, answer.getheaders(), answer.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, e.reason, list(e.headers.items()), e.read())
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class Agent:
    """One device's agent as a local application sees it: an HTTP endpoint."""

    device: str
    port: int
    bundle: Path
    tracked: Tracked | None = None

    @property
    def url(self) -> str:
        """Base URL of the agent's inference endpoint."""
        return f"http://{HOST}:{self.port}"

    def status(self, path: str) -> int | None:
        """The HTTP status of GET path, or None."""
        answer = http(self.url + path, timeout=5)
        return answer.status if answer else None

    def metadata(self) -> dict[str, Any] | None:
        """GET /v2/models/{MODEL}, or None while the model is not served."""
        answer = http(f"{self.url}/v2/models/{MODEL}", timeout=5)
        if answer is None or answer.status != 200:
            return None
        metadata: dict[str, Any] = answer.json()
        return metadata

    def update_status(self) -> dict[str, Any]:
        """What /v1/status says of MODEL's update (phase, last error), or {} if unreachable."""
        answer = http(f"{self.url}/v1/status", timeout=5)
        if answer is None or answer.status != 200:
            return {}
        updates: dict[str, Any] = answer.json().get("updates", {})
        return dict(updates.get(MODEL) or {})

    def serving(self) -> str | None:
        """The version of MODEL this agent serves, or None."""
        metadata = self.metadata()
        return str(metadata["versions"][0]) if metadata else None


def wait_until(what: str, check: Callable[[], bool], timeout: float, watch: list[Tracked]) -> None:
    """Poll `check` until it holds; fail when a watched process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for tracked in watch:
            if tracked.process.poll() is not None:
                raise StepError(
                    f"{tracked.name} exited (code {tracked.process.returncode}) while waiting "
                    f"for {what}; see {shown_path(tracked.log or Path())}"
                )
        if check():
            return
        time.sleep(0.1)
    raise StepError(f"timed out after {timeout:.0f} s waiting for {what}")


class Traffic:
    """A local application calling one agent in a loop while a new version is deployed."""

    def __init__(self, agent: Agent, body: dict[str, Any]) -> None:
        self.agent, self.body = agent, body
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self.first_seen: dict[str, float] = {}
        self.switches = 0
        self._last: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def start(self) -> None:
        """Start sending requests."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sending and wait for the request in flight."""
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def total(self) -> int:
        """Requests sent so far."""
        return sum(self.versions.values()) + len(self.failures)

    def _run(self) -> None:
        url = f"{self.agent.url}/v2/models/{MODEL}/infer"
        while not self._stop.is_set():
            answer = http(url, self.body)
            if answer is None:
                self.failures.append("no answer")
            elif answer.status != 200:
                self.failures.append(f"{answer.status} {answer.body[:200]!r}")
            else:
                version = str(answer.json()["model_version"])
                self.versions[version] += 1
                self.first_seen.setdefault(version, time.monotonic())
                if self._last is not None and version != self._last:
                    self.switches += 1
                self._last = version


def answers(agent: Agent, path: str, status: int) -> Callable[[], bool]:
    """A check: GET path on the agent answers `status`."""
    return lambda: agent.status(path) == status


def serves(agent: Agent, version: str) -> Callable[[], bool]:
    """A check: the agent serves `version` of MODEL."""
    return lambda: agent.serving() == version
