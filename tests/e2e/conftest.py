"""End-to-end fixtures: the real dashboard in a subprocess, driven by headless Debian Chromium.

Fixtures:
    app_url  (session)  base URL of the dashboard (`python serve.py`) on a free local port
                        (`streamlit_server()` starts another, e.g. a fresh one for a test)
    browser  (session)  Playwright Chromium from /usr/bin/chromium (tests/conftest.py)
    page     (function) a fresh browser context (downloads accepted) and page per test
Helpers (in streamlit_browser.py; `from streamlit_browser import wait_for_app`):
    wait_for_app(page)            block until Streamlit has finished running the script
    save_screenshot(page, name)   keep test-artifacts/screenshots/<name>.png

Every test collected under tests/e2e is marked `e2e` (deselect with `-m "not e2e"`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit_browser import ARTIFACTS, REPO_ROOT

STARTUP_TIMEOUT_S = 90.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this directory `e2e`, so no test file can forget it."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode().strip() == "ok"
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def streamlit_server(log_name: str) -> Iterator[str]:
    """Run the dashboard as users do (`python serve.py`, i.e. `streamlit run
    app.py` with the heavy imports done first) on a free port; yield its URL.

    The server's output goes to test-artifacts/<log_name>, which is kept for reading
    after a failed run and quoted in the error if the app never becomes healthy.
    """
    port = _free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / log_name
    command = [
        sys.executable,
        "serve.py",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    # The browser drives the real app on its bundled demo model: drop NORMCORE_DEMO_DIR,
    # which tests/app/conftest.py points at a tiny model for the whole pytest process.
    env = {k: v for k, v in os.environ.items() if k != "NORMCORE_DEMO_DIR"}
    env.setdefault("OMP_NUM_THREADS", "2")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(f"{base_url}/_stcore/health"):
            if server.poll() is not None or time.monotonic() > deadline:
                reason = (
                    f"exited with status {server.returncode}"
                    if server.poll() is not None
                    else f"not healthy after {STARTUP_TIMEOUT_S:.0f} s"
                )
                output = log_path.read_text(errors="replace")[-4000:]
                pytest.fail(f"streamlit server {reason}; its output:\n{output}", pytrace=False)
            time.sleep(0.25)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="session")
def app_url() -> Iterator[str]:
    """The dashboard shared by the e2e tests (log: test-artifacts/app-server.log)."""
    with streamlit_server("app-server.log") as url:
        yield url


@pytest.fixture
def page(browser):
    """A page in a fresh context per test, so no cookies or session state leak between tests."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    new_page = context.new_page()
    yield new_page
    context.close()
