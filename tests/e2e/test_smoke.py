"""The dashboard opens in a real browser: titled, rendered, and without an exception."""

import re

from playwright.sync_api import expect
from streamlit_browser import save_screenshot, wait_for_app


def test_app_opens_without_error(app_url, page):
    page.goto(app_url)
    wait_for_app(page)
    expect(page).to_have_title(re.compile("normcore"))
    expect(page.locator('[data-testid="stMainBlockContainer"]')).to_be_visible()
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)
    assert save_screenshot(page, "smoke").stat().st_size > 0
