"""End-to-end fixtures: the real dashboard in a subprocess, driven by headless Debian Chromium.

Fixtures:
    app_url  (session)  base URL of the dashboard (`python serve.py`) on a free local port
    browser  (session)  Playwright Chromium from /usr/bin/chromium (tests/conftest.py)
    page     (function) a fresh browser context (downloads accepted) and page per test
Helpers (module streamlit_browser, beside this file):
    streamlit_server(log, env)    another server, e.g. a fresh one for one test
    wait_for_app(page)            block until Streamlit has finished running the script
    save_screenshot(page, name)   keep test-artifacts/screenshots/<name>.png

Every test collected under tests/e2e is marked `e2e` (deselect with `-m "not e2e"`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit_browser import streamlit_server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this directory `e2e`, so no test file can forget it."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def demo_server_env(demo_model: Path) -> dict[str, str]:
    """The environment of a server on the bundled demo model (which must exist).

    NORMCORE_DEMO_DIR is dropped: tests/app/conftest.py points it at a tiny model for the
    whole pytest process, and the browser drives the real app on its real demo."""
    env = {k: v for k, v in os.environ.items() if k != "NORMCORE_DEMO_DIR"}
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


@pytest.fixture(scope="session")
def app_url(demo_server_env: dict[str, str]) -> Iterator[str]:
    """The dashboard shared by the e2e tests (log: test-artifacts/app-server.log)."""
    with streamlit_server("app-server.log", demo_server_env) as server:
        yield server.url


@pytest.fixture
def page(browser):
    """A page in a fresh context per test, so no cookies or session state leak between tests."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    new_page = context.new_page()
    yield new_page
    context.close()
