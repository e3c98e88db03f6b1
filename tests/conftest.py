"""Test-wide settings and the one headless browser shared by every browser test.

Tests use small tensors, for which one torch thread is faster than two and far faster
when the CPU is shared (OpenMP threads spin while waiting for a busy core).

`browser` lives here, not in tests/e2e, because tests/e2e and tests/hardening both drive
Chromium and Playwright's sync API allows one instance per process: a session fixture in
each directory made the second fail in a full run.
"""

import os
from pathlib import Path

import pytest

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


def _browser_required() -> bool:
    """In CI (or when asked) a missing browser is a failure, never a silent skip."""
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("NORMCORE_REQUIRE_BROWSER") == "1"


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium from Debian (Playwright cannot download its own browser here)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: install it with 'apt-get install chromium'"
        if _browser_required():
            pytest.fail(
                message + " (a browser is required when CI or NORMCORE_REQUIRE_BROWSER=1 is set)",
                pytrace=False,
            )
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()
