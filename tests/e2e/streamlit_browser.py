"""Helpers for driving the dashboard in a browser: start its server, wait for it, keep
screenshots. The fixtures built on them are in tests/e2e/conftest.py and
tests/hardening/conftest.py; tests and fixtures import this module by name (pyproject's
pytest `pythonpath`), and benchmarks/load.py reuses its idle test."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
STARTUP_TIMEOUT_S = 90.0
"""A hang guard: a server not healthy by then has failed to start."""

# True while a script run is in progress or anything is still a placeholder: the app is
# idle only once the script state is "notRunning", the connection is up, the status
# widget shows no running icon and no skeleton is left. (Test ids read from Streamlit
# 1.67's frontend and checked against the running app.)
_APP_IDLE_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  return app !== null
    && app.getAttribute('data-test-script-state') === 'notRunning'
    && app.getAttribute('data-test-connection-state') === 'CONNECTED'
    && document.querySelector('[data-testid="stStatusWidgetRunningIcon"]') === null
    && document.querySelector(
         '[data-testid="stSkeleton"], [data-testid="stAppSkeleton"]') === null;
}"""


def wait_for_app(page: Page, timeout_ms: float = 60_000, settle_ms: int = 200) -> None:
    """Block until the app is idle: script finished, connected, nothing left to render.

    `settle_ms` first gives a click or upload time to start its rerun, otherwise the
    previous run's idle state would be mistaken for the new one's.
    """
    page.wait_for_timeout(settle_ms)
    page.wait_for_function(_APP_IDLE_JS, timeout=timeout_ms)


def save_screenshot(page: Page, name: str, full_page: bool = True) -> Path:
    """Save a screenshot as test-artifacts/screenshots/<name>.png and return its path."""
    path = ARTIFACTS / "screenshots" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    return path


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


@dataclass(frozen=True)
class RunningServer:
    """A dashboard server that answered its health check: where to reach it, its process."""

    url: str
    process: subprocess.Popen


@contextlib.contextmanager
def streamlit_server(
    log_name: str, env: Mapping[str, str], address: str = "127.0.0.1"
) -> Iterator[RunningServer]:
    """Run the dashboard as deployed (the Dockerfile's `python serve.py`, i.e. `streamlit
    run app.py` with the heavy imports done first, from the repository root so that its
    .streamlit/config.toml applies: headless, no usage statistics) on a free local port,
    with `env` as its whole environment, listening on `address` (the Dockerfile's is
    0.0.0.0); yield it once it is healthy, reached through 127.0.0.1.

    The server's output goes to test-artifacts/<log_name>, which is kept for reading
    after a failed run and quoted in the failure if the app never becomes healthy.
    """
    port = _free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / log_name
    command = [sys.executable, "serve.py", "--server.port", str(port),
               "--server.address", address]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(f"{url}/_stcore/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                reason = (
                    f"exited with status {process.returncode}"
                    if process.poll() is not None
                    else f"not healthy after {STARTUP_TIMEOUT_S:.0f} s"
                )
                output = log_path.read_text(errors="replace")[-4000:]
                pytest.fail(f"streamlit server {reason}; its output:\n{output}", pytrace=False)
            time.sleep(0.25)
        yield RunningServer(url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
