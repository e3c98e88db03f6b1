"""Test-wide settings, the bundled demo model, and the one headless browser shared by every
browser test.

Tests use small tensors, for which one torch thread is faster than two and far faster
when the CPU is shared (OpenMP threads spin while waiting for a busy core).

`browser` lives here, not in tests/e2e, because tests/e2e and tests/hardening both drive
Chromium and Playwright's sync API allows one instance per process: a session fixture in
each directory made the second fail in a full run.

Helper modules (tests/app/dashboard_app.py, tests/e2e/streamlit_browser.py, the modules
beside tests/hardening/conftest.py) are imported by name: pyproject's pytest `pythonpath`
puts their directories on the path. Fixtures are never imported from a conftest.
"""

import os
from pathlib import Path

import pytest

from normcore.demo import MODEL_PATH

os.environ.setdefault("NORMCORE_THREADS", "1")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The bundled demo model the real dashboard opens on; a test that needs it fails
    without it (it is committed; `make demo` rebuilds it)."""
    if not MODEL_PATH.is_file():
        pytest.fail(f"{MODEL_PATH} is missing: `make demo` rebuilds it", pytrace=False)
    return MODEL_PATH


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium from Debian (Playwright cannot download its own browser here).

    Without it every browser test fails: `make test` installs it when run as root."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install it with 'apt-get install chromium' "
            "(`make test` does so when run as root)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()
