"""Helpers for driving the Streamlit app in a browser; the fixtures are in conftest.py."""

from pathlib import Path

from playwright.sync_api import Page

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"

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
