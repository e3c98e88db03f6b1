"""A small run of benchmarks/load.py: two people at once score their own cohorts against the
demo model, nobody's session fails, and closing them gives the memory back to the cache
limits. The full 10-session, 3-round run is `python benchmarks/load.py` (not in CI)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import REPO
from streamlit_browser import ARTIFACTS

DEMO = REPO / "assets" / "demo" / "fcon1000.normcore"


def _load_module():
    spec = importlib.util.spec_from_file_location("normcore_load", REPO / "benchmarks" / "load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(600)
@pytest.mark.skipif(not DEMO.exists(), reason="the demo model is not built (make demo)")
def test_two_sessions_score_their_cohorts(browser) -> None:
    """`browser` only skips (or fails in CI) without Chromium; load.py launches its own,
    with Playwright's async API in a thread of its own (the sync fixture owns this one's
    event loop)."""
    load = _load_module()
    args = argparse.Namespace(sessions=2, rounds=1, people=300, settle=2.0)
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(asyncio.run, load.run(args)).result()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "load-2-sessions.json").write_text(json.dumps(result, indent=2))
    assert result["failed_sessions"] == 0, result["rounds"][0]["sessions"]
    assert result["slowest_s"]["score_cohort"] < 120, result["slowest_s"]
    (only,) = result["rounds"]
    assert only["rss_peak_mb"] < 4096, only
