"""The dashboard in headless Chromium: first chart, every page, upload-map-score-download, profile.

Screenshots of every page go to test-artifacts/screenshots/. How fast the first chart and
the page switches come is measured by benchmarks, not asserted here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from playwright.sync_api import Page, expect
from streamlit_browser import REPO_ROOT, save_screenshot, wait_for_app

# The e2e server always runs on the bundled demo (conftest drops NORMCORE_DEMO_DIR).
DEMO_TEST = REPO_ROOT / "assets" / "demo" / "fcon1000_test.csv"
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


def no_exception(page: Page) -> None:
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)


def open_page(page: Page, title: str) -> None:
    """Click a sidebar link and wait until the new page is drawn and idle.

    The page's own heading must show before the app's idle state counts: on a slow CPU
    the rerun can start later than any fixed settle time, and the previous page's idle
    state would then end the wait before the new page had run.
    """
    page.locator('[data-testid="stSidebarNavLink"]', has_text=title).first.click()
    heading = page.locator('[data-testid="stHeading"]', has_text=re.compile(f"^{re.escape(title)}"))
    expect(heading.first).to_be_visible(timeout=180_000)
    wait_for_app(page, timeout_ms=180_000, settle_ms=100)


def test_first_chart_then_every_page(app_url, page):
    page.goto(app_url)
    expect(page.locator(CHART).first).to_be_visible(timeout=60_000)
    wait_for_app(page)
    no_exception(page)
    save_screenshot(page, "centile-fans")

    for title in PAGES:
        open_page(page, title)
        no_exception(page)
        save_screenshot(page, title.lower().replace(" ", "-"))
    for title in PAGES:  # a second visit, served from the caches, draws the page again
        open_page(page, title)
        no_exception(page)
    # another sex on the fan page draws other medians
    before = medians(page)
    box = page.locator('[data-testid="stSelectbox"]', has_text="sex")
    box.click()
    page.get_by_role("option").nth(1).click()
    # the rerun can start late on a busy CPU (the demo's warm-up shares it): wait for the
    # chart itself to change rather than for an idle state that may still be the old run's
    page.wait_for_function(
        """([selector, old]) => {
            const div = document.querySelector(selector);
            if (!div || !div.data) return false;
            const now = div.data.filter(t => t.name === 'median').map(t => JSON.stringify(t.y));
            return now.length === old.length && now.some((y, i) => y !== old[i]);
        }""",
        arg=[CHART, before],
        timeout=120_000,
    )
    wait_for_app(page, settle_ms=100)
    no_exception(page)
    after = medians(page)
    assert len(after) == len(before) > 0 and after != before


def medians(page: Page) -> list[str]:
    """The median line of each panel of the first chart, as the browser's Plotly holds it."""
    return page.locator(CHART).first.evaluate(
        "div => div.data.filter(t => t.name === 'median').map(t => JSON.stringify(t.y))"
    )


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
