"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright through
`executable_path` (scripts/ensure-chromium.sh installs it), against a real `serve` and real
agents. Screenshots go to $DASHBOARD_SCREENSHOTS, else to the test run's temporary directory.

Nothing here waits on a clock: each step waits for what the page shows (Playwright's `expect`
polls the page until it holds, and fails after its timeout with what it saw instead).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.e2e.conftest import Models, start_agent
from tests.support.agent import AgentProcess
from tests.support.fleet import Fleet
from tests.support.registry import cli, cli_json

CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 60_000  # how long a page may take to show what a step expects
FAST_TELEMETRY = "[telemetry]\ninterval_s = 1\n[updates]\nprobation_s = 1\n"
ROLLOUT_WAIT_MS = 180_000  # waves wait on the controller's passes, probation and a soak
# No traffic needed: the dashboard's agents serve no requests while the waves move.
ROLLOUT_POLICY = 'soak = "1s"\nrequire_traffic = false\nsuccess_percent = 100\n'
HOSTILE_LABEL = "<img src=x onerror=\"document.title='pwned'\"> & <b>bold</b>"


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    assert CHROMIUM.exists(), "run scripts/ensure-chromium.sh (make test does)"
    # --no-sandbox: the tests run as root in a container, where chromium's sandbox cannot start.
    launched = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
    )
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("DASHBOARD_SCREENSHOTS")
    if configured:
        Path(configured).mkdir(parents=True, exist_ok=True)
        return Path(configured)
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def dashboard_fleet(fleet: Fleet, models: Models) -> Iterator[list[AgentProcess]]:
    """Two agents in group `dash` running version 1 of `clf`, reporting every second."""
    started: list[AgentProcess] = []
    for device in ("dash-1", "dash-2"):
        start_agent(fleet, started, device, "dash", FAST_TELEMETRY)
    version = fleet.push(models.v1, "clf", "--label", "first")["version"]
    cli("deploy", "clf", str(version), "--group", "dash", "--wait", *fleet.api())
    yield started
    for agent in started:
        agent.kill()


def token(fleet: Fleet, role: str) -> str:
    created = cli_json("token", "create", "--role", role, "--name", f"dash-{role}", *fleet.api())
    return str(created["token"])


def admin_token(fleet: Fleet) -> str:
    return (fleet.home / "secrets" / "cli-token").read_text().strip()


def sign_in(browser: Browser, fleet: Fleet, secret: str) -> Page:
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.goto(f"{fleet.registry.url}/ui/")
    page.fill("#token", secret)
    page.click("#signin button[type=submit]")
    expect(page.locator("#who")).not_to_be_empty(timeout=WAIT_MS)
    return page


def test_the_fleet_page_lists_the_agents_and_follows_them_live(
    browser: Browser, fleet: Fleet, models: Models, dashboard_fleet: list[AgentProcess], shots: Path
) -> None:
    page = sign_in(browser, fleet, admin_token(fleet))
    for device in ("dash-1", "dash-2"):
        row = page.locator(f"#fleet-devices tr[data-device='{device}']")
        expect(row).to_contain_text("online", timeout=WAIT_MS)
        expect(row).to_contain_text("clf v1 / v1", timeout=WAIT_MS)
    expect(page.locator("#groups")).to_contain_text("dash")
    expect(page.locator("#live")).to_have_text("live: on", timeout=WAIT_MS)
    page.screenshot(path=str(shots / "fleet.png"), full_page=True)

    # A deploy from the CLI shows up without a reload: the marker survives.
    page.evaluate("window.stillTheSamePage = true")
    v2 = fleet.push(models.v2, "clf", "--label", "second")["version"]
    cli("deploy", "clf", str(v2), "--group", "dash", "--wait", *fleet.api())
    for device in ("dash-1", "dash-2"):
        row = page.locator(f"#fleet-devices tr[data-device='{device}']")
        expect(row).to_contain_text(f"clf v{v2} / v{v2}", timeout=WAIT_MS)
    assert page.evaluate("window.stillTheSamePage") is True

    page.fill("#fleet-search", "dash-2")
    expect(page.locator("#fleet-devices tbody tr")).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator("#fleet-summary")).to_have_text("1-1 of 1 devices")


def test_a_device_page_charts_its_resources_and_lists_its_events(
    browser: Browser,
    fleet: Fleet,
    models: Models,
    dashboard_fleet: list[AgentProcess],
    shots: Path,
) -> None:
    for _ in range(20):  # something for the requests and latency charts
        status, _answer = dashboard_fleet[0].infer("clf", models.rows)
        assert status == 200
    page = sign_in(browser, fleet, admin_token(fleet))
    page.click("#fleet-devices a.device-link >> text=dash-1")
    expect(page.locator("#device-title")).to_have_text("dash-1", timeout=WAIT_MS)
    expect(page.locator("#timeline")).to_contain_text("activated", timeout=WAIT_MS)
    page.click("#window button[data-window='1h']")
    expect(page.locator("#window button.active")).to_have_text("1h", timeout=WAIT_MS)
    for title in ("clf: requests per step", "clf: latency", "RSS", "CPU", "Disk used"):
        chart = page.locator(f"figure.chart[data-chart='{title}']")
        expect(chart.locator("canvas")).to_have_count(1, timeout=WAIT_MS)
    page.screenshot(path=str(shots / "device.png"), full_page=True)


def test_a_hostile_label_is_shown_as_text(
    browser: Browser, fleet: Fleet, models: Models, dashboard_fleet: list[AgentProcess], shots: Path
) -> None:
    fleet.push(models.v3, "labels", "--label", HOSTILE_LABEL)
    page = sign_in(browser, fleet, admin_token(fleet))
    title = page.title()
    page.goto(f"{fleet.registry.url}/ui/#/models/labels")
    label = page.locator("#versions td.label")
    expect(label).to_have_text(HOSTILE_LABEL, timeout=WAIT_MS)
    assert page.locator("#versions img, #versions b").count() == 0
    assert page.title() == title != "pwned"
    page.goto(f"{fleet.registry.url}/ui/#/models/clf")
    expect(page.locator("#versions")).to_contain_text("second", timeout=WAIT_MS)
    page.screenshot(path=str(shots / "models.png"), full_page=True)
    # The drift view of a model whose releases carry no profile says so.
    page.goto(f"{fleet.registry.url}/ui/#/drift/clf")
    expect(page.locator("main h1")).to_have_text("Drift of clf", timeout=WAIT_MS)
    page.goto(f"{fleet.registry.url}/ui/#/experiments")
    expect(page.locator("main")).to_contain_text("No experiments yet", timeout=WAIT_MS)


def test_a_publisher_deploys_and_a_viewer_gets_no_button_and_a_403(
    browser: Browser, fleet: Fleet, dashboard_fleet: list[AgentProcess]
) -> None:
    viewer = sign_in(browser, fleet, token(fleet, "viewer"))
    viewer.goto(f"{fleet.registry.url}/ui/#/models/clf")
    expect(viewer.locator("#versions tbody tr").first).to_be_visible(timeout=WAIT_MS)
    assert viewer.locator("#versions button.deploy").count() == 0
    status = viewer.evaluate(
        """async () => {
            const session = await (await fetch("/ui/session")).json();
            const answer = await fetch("/v1/deployments", {
                method: "POST",
                headers: {"Content-Type": "application/json", "X-CSRF-Token": session.csrf},
                body: JSON.stringify({model: "clf", version: 1, group: "dash"}),
            });
            return answer.status;
        }"""
    )
    assert status == 403

    publisher = sign_in(browser, fleet, token(fleet, "publisher"))
    publisher.goto(f"{fleet.registry.url}/ui/#/models/clf")
    row = publisher.locator("#versions tr[data-version='1']")
    row.locator("select.deploy-group").select_option("dash")
    row.locator("button.deploy").click()
    expect(publisher.locator("#models-notice")).to_contain_text("Deployment", timeout=WAIT_MS)
    newest = cli_json("deployments", "list", *fleet.api())["deployments"][0]
    assert (newest["model"], newest["version"], newest["target"]) == ("clf", 1, {"group": "dash"})
    assert newest["created_by"] == "token:dash-publisher"


def rollout_state(fleet: Fleet, rollout_id: int) -> str:
    shown = cli_json("rollout", "status", str(rollout_id), *fleet.api())
    return str(shown["state"])


@pytest.mark.usefixtures("dashboard_fleet")
def test_a_rollout_from_the_cli_moves_live_and_the_page_pauses_and_resumes_it(
    browser: Browser, fleet: Fleet, models: Models, shots: Path, tmp_path: Path
) -> None:
    version = fleet.push(models.v3, "clf", "--label", "third")["version"]
    policy = tmp_path / "policy.toml"
    policy.write_text(ROLLOUT_POLICY)
    page = sign_in(browser, fleet, token(fleet, "publisher"))
    page.goto(f"{fleet.registry.url}/ui/#/rollouts")
    page.evaluate("window.stillTheSamePage = true")
    started = cli_json(
        "rollout", "start", "clf", str(version), "--group", "dash", "--steps", "50,100",
        "--manual", "--policy", str(policy), *fleet.api(),
    )  # fmt: skip
    rollout = started["id"]
    # The listing shows it without a reload; the page follows it from there.
    page.click(f"#rollouts tr[data-rollout='{rollout}'] a")
    waves = page.locator("#waves tbody tr")
    expect(waves).to_have_count(2, timeout=WAIT_MS)
    first = page.locator("#waves tr[data-wave='1']")
    expect(first).to_have_attribute("data-state", "passed", timeout=ROLLOUT_WAIT_MS)
    expect(first.locator(".wave-count")).to_have_text("1/1 activated")
    expect(page.locator("#rollout-state")).to_have_text("waiting", timeout=ROLLOUT_WAIT_MS)
    expect(page.locator("#gates")).to_contain_text("install")
    page.screenshot(path=str(shots / "rollout.png"), full_page=True)

    page.click("#rollout-actions button[data-action='pause']")
    expect(page.locator("#rollout-state")).to_have_text("paused", timeout=WAIT_MS)
    assert rollout_state(fleet, rollout) == "paused"

    viewer = sign_in(browser, fleet, token(fleet, "viewer"))
    viewer.goto(f"{fleet.registry.url}/ui/#/rollouts/{rollout}")
    expect(viewer.locator("#rollout-state")).to_have_text("paused", timeout=WAIT_MS)
    assert viewer.locator("#rollout-actions").count() == 0
    status = viewer.evaluate(
        """async (id) => {
            const session = await (await fetch("/ui/session")).json();
            const answer = await fetch(`/v1/rollouts/${id}/resume`, {
                method: "POST", headers: {"X-CSRF-Token": session.csrf},
            });
            return answer.status;
        }""",
        rollout,
    )
    assert status == 403
    assert rollout_state(fleet, rollout) == "paused"

    page.click("#rollout-actions button[data-action='resume']")
    second = page.locator("#waves tr[data-wave='2']")
    expect(second).not_to_have_attribute("data-state", "planned", timeout=ROLLOUT_WAIT_MS)
    expect(page.locator("#rollout-state")).to_have_text("completed", timeout=ROLLOUT_WAIT_MS)
    expect(second).to_have_attribute("data-state", "passed")
    assert page.evaluate("window.stillTheSamePage") is True
    assert rollout_state(fleet, rollout) == "completed"
