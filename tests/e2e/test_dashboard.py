"""The dashboard in headless Chromium: first chart, every page, upload-map-score-download, profile.

Timings (first centile chart after page load, each page switch once cached) are written to
test-artifacts/timings.json and screenshots of every page to test-artifacts/screenshots/.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest
from playwright.sync_api import Page, expect
from streamlit_browser import ARTIFACTS, REPO_ROOT, save_screenshot, wait_for_app

# The e2e server always runs on the bundled demo (conftest drops NORMCORE_DEMO_DIR).
DEMO_DIR = REPO_ROOT / "assets" / "demo"
DEMO_TEST = DEMO_DIR / "fcon1000_test.csv"
CHART = '[data-testid="stPlotlyChart"] .js-plotly-plot'
PAGES = [
    "Dependence",
    "Diagnostics",
    "Individual",
    "Cohort",
    "Data",
    "Model",
    "Teach",
    "Centile fans",
]

pytestmark = pytest.mark.skipif(
    not (DEMO_DIR / "fcon1000.normcore").exists(),
    reason="the demo model is not built (make demo)",
)


def record(name: str, seconds: float | dict[str, float]) -> None:
    path = ARTIFACTS / "timings.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = (
        {k: round(v, 2) for k, v in seconds.items()}
        if isinstance(seconds, dict)
        else round(seconds, 2)
    )
    path.write_text(json.dumps(data, indent=2))


def no_exception(page: Page) -> None:
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)


def open_page(page: Page, title: str) -> float:
    """Click a sidebar link and return the seconds until the new page is idle.

    The page's own heading must show before the app's idle state counts: on a slow CPU
    the rerun can start later than any fixed settle time, and the previous page's idle
    state then ended the wait early, charging the real work to the next switch (a first
    visit of 0.55 s, then a "cached" one of 4.8 s).
    """
    start = time.monotonic()
    page.locator('[data-testid="stSidebarNavLink"]', has_text=title).first.click()
    heading = page.locator('[data-testid="stHeading"]', has_text=re.compile(f"^{re.escape(title)}"))
    expect(heading.first).to_be_visible(timeout=180_000)
    wait_for_app(page, timeout_ms=180_000, settle_ms=100)
    return time.monotonic() - start


FIRST_CHART_CEILING_S = 10.0
"""Issue 4's target. serve.py imports torch and the rest before the first visitor:
3.2 s on the 2-core AMD EPYC of 2026-12-01 (13.6 s when the first visit paid for them)."""


def test_first_chart_then_every_page(app_url, page):
    start = time.monotonic()
    page.goto(app_url)
    expect(page.locator(CHART).first).to_be_visible(timeout=60_000)
    first_chart = time.monotonic() - start
    record("first_centile_chart_s", first_chart)
    wait_for_app(page)
    no_exception(page)
    save_screenshot(page, "centile-fans")
    assert first_chart < FIRST_CHART_CEILING_S, f"first centile chart took {first_chart:.1f} s"

    first_visit, second_visit = {}, {}
    for title in PAGES:
        first_visit[title] = open_page(page, title)
        no_exception(page)
        save_screenshot(page, title.lower().replace(" ", "-"))
    for title in PAGES:
        second_visit[title] = open_page(page, title)
    record("page_first_visit_s", first_visit)
    record("page_cached_visit_s", second_visit)
    # a control change on the fan page, once cached
    box = page.locator('[data-testid="stSelectbox"]', has_text="sex")
    box.click()
    page.get_by_role("option").nth(1).click()
    start = time.monotonic()
    wait_for_app(page, settle_ms=100)
    record("fan_sex_switch_s", time.monotonic() - start + 0.1)
    no_exception(page)
    slow = {k: v for k, v in second_visit.items() if v > 3.0}
    assert not slow, f"cached page switches slower than 3 s: {slow}"


def choose(page: Page, label: str, option: str) -> None:
    """Pick `option` in the Streamlit select box labelled `label`."""
    box = page.locator('[data-testid="stSelectbox"]', has_text=label).first
    box.click()
    page.keyboard.type(option)
    page.get_by_role("option", name=option, exact=True).first.click()
    wait_for_app(page)


def test_upload_map_score_download(app_url, page, tmp_path):
    cohort = pd.read_csv(DEMO_TEST).head(40)
    sent = cohort.rename(columns={"age": "years_old"})
    sent["sex"] = sent["sex"].map({0: "F", 1: "M"})
    csv = tmp_path / "clinic.csv"
    sent.to_csv(csv, index=False)

    page.goto(f"{app_url}/data")
    wait_for_app(page)
    page.locator('input[type="file"]').first.set_input_files(str(csv))
    wait_for_app(page)
    expect(page.get_by_text("Uploaded table: clinic.csv (40 rows)")).to_be_visible()
    expect(page.get_by_text("Some of the model's columns are not mapped yet")).to_be_visible()
    choose(page, "Age (years)", "years_old")
    expect(page.get_by_text("Ready to score 40 people")).to_be_visible()
    save_screenshot(page, "data-mapped")

    open_page(page, "Cohort")
    no_exception(page)
    with page.expect_download() as info:
        page.get_by_role("button", name="Download scores").click()
    path = Path(info.value.path())
    scores = pd.read_csv(path)
    assert list(scores.columns[:3]) == ["row", "sub_id", "idp"]
    assert {"value", "centile", "z", "centile_se", "out_of_age_range"} <= set(scores.columns)
    n_idps = scores["idp"].nunique()
    assert len(scores) == 40 * n_idps
    assert set(scores["sub_id"]) == set(cohort["sub_id"])
    save_screenshot(page, "cohort-uploaded")

    open_page(page, "Individual")
    no_exception(page)
    expect(page.get_by_text("Multivariate deviation centile")).to_be_visible()
    expect(page.locator(CHART)).to_have_count(3)
    with page.expect_download() as info:
        page.get_by_role("button", name="Download one-page report").click()
    report = Path(info.value.path()).read_text()
    assert "Individual deviation report" in report and cohort["sub_id"].iloc[0] in report
    save_screenshot(page, "individual-uploaded")
