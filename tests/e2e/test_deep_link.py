"""A bookmarked page address opened as the very first request of a fresh server.

Streamlit serves such a request in its older pages/-folder mode until app.py has declared
its navigation once; without the guard in pages/common.py the page ran alone, with a
sidebar listing every file of pages/ and no model panel.
"""

from playwright.sync_api import expect
from streamlit_browser import save_screenshot, streamlit_server, wait_for_app


def test_first_request_to_a_page_address_gets_the_whole_dashboard(page, demo_server_env):
    with streamlit_server("deep-link-server.log", demo_server_env) as server:
        page.goto(f"{server.url}/data")
        wait_for_app(page)
        expect(page.get_by_role("heading", name="Data", exact=True)).to_be_visible()
        nav = page.locator('[data-testid="stSidebarNav"]')
        expect(nav.get_by_text("Centile fans")).to_be_visible()
        expect(nav.get_by_text("common", exact=True)).to_have_count(0)
        expect(
            page.locator('[data-testid="stSidebar"]').get_by_text("normcore").first
        ).to_be_visible()
        expect(page.locator('[data-testid="stException"]')).to_have_count(0)
        save_screenshot(page, "deep-link-data")
