"""Two people on one dashboard at once, in headless Chromium against a real server.

Each uploads a different cohort (ids carry a random tag) and must see only their own;
while one trains a model, the other keeps switching pages and changing controls, and
each of those is served in full (how fast is benchmarks' to measure). Afterwards the
server's HOME, TMPDIR and the repository are searched for the uploaded values, and the
server's TCP peers, the trap proxy and the browsers' requests are checked for anything
leaving the machine.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import pytest
from playwright.sync_api import BrowserContext, Page, expect
from privacy import Planted, files_holding, planted_cohort
from sandbox import Server, is_loopback
from streamlit_browser import REPO_ROOT, wait_for_app
from synthetic_world import SPEC


@pytest.fixture(scope="module")
def cohorts() -> dict[str, Planted]:
    return {
        "alpha": planted_cohort(SPEC, 240, seed=31, label="ALPHA"),
        "bravo": planted_cohort(SPEC, 180, seed=32, label="BRAVO"),
    }


@pytest.fixture(scope="module")
def outside_requests() -> list[str]:
    """URLs the browsers asked for that are not on this machine (filled by `users`)."""
    return []


@pytest.fixture(scope="module")
def users(browser, sandboxed_server: Server, outside_requests: list[str]
          ) -> Iterator[dict[str, Page]]:
    contexts: list[BrowserContext] = []
    pages = {}
    for name in ("alpha", "bravo"):
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(60_000)
        context.on("request", lambda r: None if _local(r.url) else outside_requests.append(r.url))
        contexts.append(context)
        pages[name] = context.new_page()
    yield pages
    for context in contexts:
        context.close()


def _local(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("data", "blob", "about") or is_loopback(parsed.hostname or "")


def body(page: Page) -> str:
    return page.locator("body").inner_text()


def no_exception(page: Page) -> None:
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)


def served(page: Page, action: Callable[[], None], heading: str | None) -> None:
    """Do `action`, wait until the app has finished it, and check what it drew."""
    action()
    wait_for_app(page, timeout_ms=120_000, settle_ms=100)
    no_exception(page)
    if heading is not None:
        title = page.locator('[data-testid="stHeading"]', has_text=re.compile(f"^{heading}"))
        expect(title.first).to_be_visible()


def nav(page: Page, title: str) -> None:
    page.locator('[data-testid="stSidebarNavLink"]', has_text=title).first.click()


def fill(page: Page, key: str, value: str) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(value)
    box.press("Enter")
    wait_for_app(page)


def other_user_actions(page: Page) -> list[tuple[Callable[[], None], str | None]]:
    """What the other person does, and the heading each action must leave on the page:
    switch pages, change a control on the fan page."""
    return [
        (lambda: nav(page, "Centile fans"), "Centile fans"),
        (lambda: page.locator(".st-key-fan_cols label", has_text="1").click(), "Centile fans"),
        (lambda: page.locator(".st-key-fan_cols label", has_text="3").click(), "Centile fans"),
        (lambda: nav(page, "Data"), "Data"),
        (lambda: nav(page, "Cohort"), "Cohort"),
        (lambda: nav(page, "Teach"), "Teach"),
    ]


@pytest.mark.timeout(420)
def test_two_users_see_their_own_data_and_one_is_served_while_the_other_trains(
    sandboxed_server: Server, users: dict[str, Page], cohorts: dict[str, Planted]
) -> None:
    for page in users.values():
        # The root URL, not /data: on a fresh server a deep link runs pages/data.py alone
        # (Streamlit's pages/ directory mode) until some session has run app.py.
        page.goto(sandboxed_server.url)
        wait_for_app(page)
        nav(page, "Data")
        wait_for_app(page)
    for name, page in users.items():  # both uploads in flight at once
        planted = cohorts[name]
        page.locator('input[type="file"]').first.set_input_files(files=[{
            "name": f"{planted.tag}.csv", "mimeType": "text/csv",
            "buffer": planted.table.to_csv(index=False).encode(),
        }])
    for page in users.values():
        wait_for_app(page)
        no_exception(page)
    alpha, bravo = users["alpha"], users["bravo"]

    def sees_only_own(name: str, page: Page) -> None:
        own, other = cohorts[name], cohorts["bravo" if name == "alpha" else "alpha"]
        text = body(page)
        assert f"{own.tag}.csv: {len(own.table)} rows" in text, text[:800]
        assert other.tag not in text

    for name, page in users.items():
        sees_only_own(name, page)
    for page in users.values():
        nav(page, "Model")
    for page in users.values():
        wait_for_app(page)
        nav(page, "Data")
    for name, page in users.items():
        wait_for_app(page)
        sees_only_own(name, page)

    nav(alpha, "Model")
    wait_for_app(alpha)
    alpha.get_by_text("Advanced options").click()
    fill(alpha, "train_epochs", "5000")
    fill(alpha, "train_minutes", "0.5")  # trains for 30 s, then builds its centile table
    fill(alpha, "train_reference", "300")
    fill(alpha, "train_steps", "10")
    alpha.locator(".st-key-train_start button").click()
    expect(alpha.get_by_text("Training: epoch")).to_be_visible(timeout=60_000)

    rounds = 0
    while "Training: epoch" in body(alpha) and rounds < 3:
        for act, heading in other_user_actions(bravo):
            served(bravo, act, heading)
        rounds += 1
    assert rounds, "training ended before the other person did anything"

    expect(alpha.get_by_text("Training finished")).to_be_visible(timeout=240_000)
    # The page's text, not the app's idle state alone: on a loaded CPU the idle state of
    # the page left behind can outlast wait_for_app's settle time.
    for name, page in (("alpha", alpha), ("bravo", bravo)):
        nav(page, "Cohort")
        scoring = f"Scoring {len(cohorts[name].table)} people"
        expect(page.locator("body")).to_contain_text(scoring, timeout=120_000)
        wait_for_app(page, timeout_ms=120_000)
        no_exception(page)
    text = body(bravo)
    assert "Trained this session" not in text  # the other person's model stays theirs


@pytest.mark.timeout(120)
def test_server_kept_nothing_and_sent_nothing(
    sandboxed_server: Server, users: dict[str, Page], cohorts: dict[str, Planted],
    outside_requests: list[str],
) -> None:
    """Runs after the two-user session (same module-scoped server and browsers)."""
    time.sleep(0.5)  # one more /proc sample after the last page
    hits = files_holding(
        cohorts.values(), [REPO_ROOT, sandboxed_server.home, sandboxed_server.tmp],
        since=sandboxed_server.started,
    )
    assert not hits, f"uploaded values found on disk: {hits}"
    outbound = {(ip, port) for ip, port in sandboxed_server.peers if not is_loopback(ip)}
    assert not outbound, f"the server connected off the machine: {outbound}"
    assert not sandboxed_server.proxy.requests, sandboxed_server.proxy.requests[:3]
    assert not outside_requests, outside_requests[:5]
