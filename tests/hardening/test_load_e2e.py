"""A small run of benchmarks/load.py, with each kind of person it has (browsers, and the
page's own messages without one): two people at once score their own cohorts against the
demo model, nobody's session fails, and closing them gives the memory back to the cache
limits. The full 10-session, 3-round run is `python benchmarks/load.py` (not in CI)."""

from __future__ import annotations

import argparse
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from streamlit_browser import ARTIFACTS

from benchmarks import load


@pytest.mark.timeout(600)
@pytest.mark.parametrize("client", ["browser", "server"])
def test_two_sessions_score_their_cohorts(client, browser, demo_model) -> None:
    """`browser` fails the test without Chromium; load.py launches its own, with
    Playwright's async API in a thread of its own (the sync fixture owns this one's
    event loop). How fast the sessions are served is benchmarks/load.py's to measure."""
    # Every step fails its session after 120 s (text that never shows is a failure, not a
    # hang); the whole run is bounded again by result(timeout=...).
    args = argparse.Namespace(
        sessions=2, rounds=1, people=300, settle=2.0, step_timeout=120.0, client=client
    )
    pool = ThreadPoolExecutor(1)
    try:
        result = pool.submit(asyncio.run, load.run(args)).result(timeout=540)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"load-2-sessions-{client}.json").write_text(json.dumps(result, indent=2))
    (only,) = result["rounds"]
    assert result["failed_sessions"] == 0, only["sessions"]
    assert len(only["sessions"]) == 2
    assert only["rss_peak_mb"] < 4096, only
