"""The dashboard's server side: its files and their security headers, signing in with a token
into a cookie, CSRF and origin checks, the paged fleet, a device's history and the live stream."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import pytest
from yarl import URL

from model_registry.dashboard import live
from model_registry.dashboard.routes import STATIC_FILES
from model_registry.dashboard.session import CSRF_HEADER
from model_registry.statistics.points import points_from_telemetry
from model_registry.statistics.resources import point_from_telemetry
from model_registry.storage import DeviceReport
from model_registry.tokens import generate_token, hash_token
from tests.registry.conftest import Api
from tests.support.storage_records import device


async def sign_in(api: Api, token: str | None = None, **headers: str) -> dict[str, str]:
    response = await api.client.post(
        "/ui/session", json={"token": token or api.admin_token}, headers=headers
    )
    assert response.status == 201, await response.text()
    return dict(await response.json())


async def token_of(api: Api, role: str) -> str:
    token = generate_token()
    await api.ctx.storage.add_token(role, role, hash_token(token), api.ctx.clock())
    return token


async def test_the_page_and_its_files_come_with_a_strict_policy(api: Api) -> None:
    page = await api.client.get("/ui/")
    assert page.status == 200
    assert page.content_type == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    script = await api.client.get("/ui/app.js")
    assert script.content_type == "text/javascript"
    for path in ("/ui/%2E%2E%2Fregistry.toml", "/ui/no-such-file.js"):
        missing = await api.client.get(URL(path, encoded=True))
        assert missing.status == 404, path
        assert "Content-Security-Policy" in missing.headers


def test_no_file_has_inline_script_style_or_html_injection() -> None:
    for name, (body, _) in STATIC_FILES.items():
        if name.startswith("vendor/"):
            continue
        text = body.decode()
        assert "innerHTML" not in text, name
        assert "insertAdjacentHTML" not in text, name
        assert "document.write" not in text, name
        if name.endswith(".html"):
            assert not re.search(r"<script(?![^>]*\bsrc=)", text), name
            assert not re.search(r"\son[a-z]+=|\sstyle=", text), name


async def test_signing_in_sets_a_strict_cookie_and_a_csrf_value(api: Api) -> None:
    refused = await api.client.post("/ui/session", json={"token": "not-a-token"})
    assert refused.status == 401
    response = await api.client.post("/ui/session", json={"token": api.admin_token})
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP here
    session = await (await api.client.get("/ui/session")).json()
    assert session["role"] == "admin"
    assert len(session["csrf"]) == 64
    assert (await api.client.get("/v1/models")).status == 200  # the cookie stands for the token
    tls = await api.client.post(
        "/ui/session", json={"token": api.admin_token}, headers={"X-Forwarded-Proto": "https"}
    )
    assert "Secure" in tls.headers["Set-Cookie"]
    out = await api.client.delete("/ui/session", headers={CSRF_HEADER: session["csrf"]})
    assert out.status == 200
    assert (await api.client.get("/ui/session")).status == 401
    assert (await api.client.get("/v1/models")).status == 401


async def test_changes_through_the_cookie_need_the_csrf_value_and_this_origin(api: Api) -> None:
    session = await sign_in(api)
    body = {"model": "nothing", "version": 1, "group": "lab"}
    forged = await api.client.post("/v1/deployments", json=body)
    assert forged.status == 403
    assert CSRF_HEADER in (await forged.json())["error"]
    wrong = await api.client.post("/v1/deployments", json=body, headers={CSRF_HEADER: "0" * 64})
    assert wrong.status == 403
    elsewhere = await api.client.post(
        "/v1/deployments",
        json=body,
        headers={CSRF_HEADER: session["csrf"], "Origin": "https://evil.example"},
    )
    assert elsewhere.status == 403
    allowed = await api.client.post(
        "/v1/deployments", json=body, headers={CSRF_HEADER: session["csrf"]}
    )
    assert allowed.status == 404  # past authentication: the model does not exist


async def test_a_viewer_session_sees_but_cannot_act(api: Api) -> None:
    session = await sign_in(api, await token_of(api, "viewer"))
    assert session["role"] == "viewer"
    assert (await api.client.get("/v1/fleet/devices")).status == 200
    act = await api.client.post(
        "/v1/deployments",
        json={"model": "m", "version": 1, "group": "lab"},
        headers={CSRF_HEADER: session["csrf"]},
    )
    assert act.status == 403
    assert "publisher" in (await act.json())["error"]


async def test_the_fleet_is_filtered_searched_and_paged_on_the_server(api: Api) -> None:
    storage = api.ctx.storage
    now = api.ctx.clock()
    for n in range(30):
        await storage.add_device(device(f"pi-{n:03d}", group="lab" if n < 20 else "field"))
    online = {"online": True, "telemetry_interval_s": 30}
    await storage.add_device_reports(
        [DeviceReport(f"pi-{n:03d}", "state", now, online) for n in range(5)]
    )
    auth = api.auth()
    page = await (await api.client.get("/v1/fleet/devices?limit=10&offset=10", headers=auth)).json()
    assert page["matched"] == 30
    assert [d["device_id"] for d in page["devices"]] == [f"pi-{n:03d}" for n in range(10, 20)]
    assert page["groups"] == [
        {"group": "field", "devices": 10, "online": 0, "stale": 0, "offline": 10},
        {"group": "lab", "devices": 20, "online": 5, "stale": 0, "offline": 15},
    ]
    found = await api.client.get("/v1/fleet/devices?group=lab&connection=online", headers=auth)
    assert [d["device_id"] for d in (await found.json())["devices"]] == [
        f"pi-{n:03d}" for n in range(5)
    ]
    searched = await api.client.get("/v1/fleet/devices?search=PI-02", headers=auth)
    assert (await searched.json())["matched"] == 10
    for query, complaint in [
        ("connection=sleepy", "connection must be one of"),
        ("limit=0", "limit must be from 1"),
        ("limit=100000", "limit must be from 1"),
        ("offset=-1", "offset must be a whole number"),
        ("search=" + "x" * 200, "search is longer"),
    ]:
        response = await api.client.get(f"/v1/fleet/devices?{query}", headers=auth)
        assert response.status == 400, query
        assert complaint in (await response.json())["error"]


async def test_a_device_history_has_its_resource_points(api: Api) -> None:
    storage = api.ctx.storage
    await storage.add_device(device("pi-1"))
    now = api.ctx.clock()
    body = {
        "interval_s": 30.0,
        "resources": {
            "rss_bytes": 2048,
            "cpu_seconds": 3.0,
            "disk_free_bytes": 1,
            "disk_total_bytes": 4,
        },
    }
    reports = [
        DeviceReport(
            "pi-1", "telemetry", at, body, resources=point_from_telemetry("pi-1", at, body)
        )
        for at in (now - timedelta(minutes=3), now - timedelta(minutes=2))
    ]
    await storage.add_device_reports(reports)
    response = await api.client.get("/v1/devices/pi-1/history?window=1h", headers=api.auth())
    history = await response.json()
    assert history["step_s"] == 60
    assert [p["rss_bytes"] for p in history["resources"]] == [2048, 2048]
    assert history["resources"][0]["cpu_percent"] == pytest.approx(10.0)
    assert history["resources"][0]["disk_used_percent"] == pytest.approx(75.0)
    assert history["models"] == {}
    body = {
        "interval_s": 30.0,
        "models": {
            "clf": {
                "versions": {
                    "1": {"requests": 4, "2xx": 3, "4xx": 0, "5xx": 1, "rejected_503": 0,
                          "latency_ms": {"p50": 2.0, "p99": 6.0, "max": 7.0, "samples": 4}},
                    "2": {"requests": 12, "2xx": 12, "4xx": 0, "5xx": 0, "rejected_503": 0,
                          "latency_ms": {"p50": 1.0, "p99": 2.0, "max": 3.0, "samples": 12}},
                }
            }
        },
    }  # fmt: skip
    at = now - timedelta(minutes=1)
    points = points_from_telemetry("pi-1", at, body)
    await storage.add_device_reports([DeviceReport("pi-1", "telemetry", at, body, points=points)])
    response = await api.client.get("/v1/devices/pi-1/history?window=1h", headers=api.auth())
    [step] = (await response.json())["models"]["clf"]
    assert (step["versions"], step["requests"], step["server_errors"]) == ([1, 2], 16, 1)
    assert step["latency_p99_ms"] == pytest.approx((6.0 * 4 + 2.0 * 12) / 16)
    bad = await api.client.get("/v1/devices/pi-1/history?window=2y", headers=api.auth())
    assert bad.status == 400
    assert "window must be one of" in (await bad.json())["error"]
    unknown = await api.client.get("/v1/devices/pi-2/history", headers=api.auth())
    assert unknown.status == 404


async def read_event(stream: asyncio.StreamReader) -> str:
    lines = []
    while (line := (await stream.readline()).decode()) != "\n":
        lines.append(line)
    return "".join(lines)


async def test_the_live_stream_says_what_changed_and_is_bounded(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "POLL_S", 0.05)
    monkeypatch.setattr(live, "MAX_STREAMS", 1)
    unauthenticated = await api.client.get("/ui/events")
    assert unauthenticated.status == 401
    response = await api.client.get("/ui/events", headers=api.auth())
    assert response.content_type == "text/event-stream"
    assert "Content-Security-Policy" in response.headers
    assert (await read_event(response.content)).startswith("retry:")
    first = await asyncio.wait_for(read_event(response.content), 30)
    assert first.startswith("event: change")
    full = await api.client.get("/ui/events", headers=api.auth())
    assert full.status == 503
    assert "live streams" in (await full.json())["error"]
    await api.ctx.storage.add_device(device("pi-new"))
    changed = await asyncio.wait_for(read_event(response.content), 30)
    assert '"changed":["fleet"]' in changed
    response.close()
