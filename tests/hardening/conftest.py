"""Fixtures for the hardening tests: hostile tables, hostile model files, several users, privacy.

Helper modules beside this file (imported by name through pyproject's pytest `pythonpath`):
synthetic_world (the tiny synthetic data and models), sandbox (trap proxy, TCP peers),
privacy (planted values and the disk search); streamlit_browser in tests/e2e starts servers.

Fixtures:
    tiny_model      (session)  a small fitted NormativeModel on synthetic data (seconds)
    no_demo         (function) points the dashboard at an empty demo directory, so an
                               AppTest depends only on what the test uploads or trains
    app             (function) factory: an AppTest of the dashboard on a given page
    browser         (session)  Playwright Chromium from /usr/bin/chromium (tests/conftest.py)
    sandboxed_server(module)   the deployed server command with its own HOME and TMPDIR, a trap
                               proxy in its environment and a tiny demo model; yields a
                               `Server` with the URL, pid and the directories to audit
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sandbox import Server, TrapProxy, remote_peers
from streamlit.testing.v1 import AppTest
from streamlit_browser import REPO_ROOT, streamlit_server
from synthetic_world import fit_tiny, write_tiny_demo

from normcore import NormativeModel

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests here are `e2e` like those in tests/e2e, so `-m "not e2e"` skips them."""
    for item in items:
        if HERE in item.path.parents and item.path.name.endswith("_e2e.py"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def tiny_model() -> NormativeModel:
    """A small model on synthetic data: enough for the dashboard's code paths."""
    return fit_tiny(200, seed=11)


@pytest.fixture
def no_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty demo directory: the dashboard then has no model until one is uploaded/trained.

    Set per test (the dashboard reads NORMCORE_DEMO_DIR on every run), so the tiny demo
    of tests/app is untouched for its own tests."""
    empty = tmp_path / "no-demo"
    empty.mkdir()
    monkeypatch.setenv("NORMCORE_DEMO_DIR", str(empty))
    return empty


@pytest.fixture
def app(no_demo: Path) -> Callable[[str | None], AppTest]:
    def open_app(page: str | None = None) -> AppTest:
        at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=120)
        at.run()
        if page is not None:
            at.switch_page(page)
            at.run()
        return at

    return open_app


@pytest.fixture(scope="module")
def sandboxed_server(browser) -> Iterator[Server]:
    """The dashboard as deployed (repository root, .streamlit/config.toml, the
    Dockerfile's command: no usage-statistics flag, so the repository's config is what
    keeps them off), but with a fresh HOME and TMPDIR to audit afterwards, a trap proxy
    in the proxy variables, and a tiny demo model so that pages have something to draw.
    A background thread samples the server's TCP peers from /proc every 0.2 s for the
    outbound-connection check."""
    sandbox = Path(tempfile.mkdtemp(prefix="normcore-hardening-"))
    home, tmp, demo = sandbox / "home", sandbox / "tmp", sandbox / "demo"
    for d in (home, tmp, demo):
        d.mkdir()
    write_tiny_demo(demo)
    proxy = TrapProxy()
    trap = f"http://127.0.0.1:{proxy.port}"
    env = {
        k: v for k, v in os.environ.items()
        if k.upper() not in ("NORMCORE_DEMO_DIR", "NO_PROXY", "HTTP_PROXY", "HTTPS_PROXY")
    }
    env.update(
        HOME=str(home), TMPDIR=str(tmp), NORMCORE_DEMO_DIR=str(demo),
        HTTP_PROXY=trap, HTTPS_PROXY=trap, ALL_PROXY=trap,
        http_proxy=trap, https_proxy=trap, all_proxy=trap, no_proxy="127.0.0.1,localhost",
        OMP_NUM_THREADS="1",
    )
    started = time.time()
    stop = threading.Event()
    try:
        with streamlit_server("hardening-server.log", env) as running:
            server = Server(running.url, running.process.pid, home, tmp, started, proxy)

            def watch() -> None:
                while not stop.is_set():
                    try:
                        server.peers |= remote_peers(server.pid)
                    except (OSError, ValueError):
                        pass
                    stop.wait(0.2)

            threading.Thread(target=watch, daemon=True).start()
            yield server
    finally:
        stop.set()
        proxy.close()
