"""Fixtures for the hardening tests: hostile tables, hostile model files, several users, privacy.

Reuses the e2e machinery (Debian Chromium launch, `wait_for_app`) from tests/e2e, loaded
by path because both directories name their fixture module `conftest.py`.

Fixtures:
    tiny_model      (session)  a small fitted NormativeModel on synthetic data (seconds)
    no_demo         (function) points the dashboard at an empty demo directory, so an
                               AppTest depends only on what the test uploads or trains
    app             (function) factory: an AppTest of the dashboard on a given page
    browser         (session)  Playwright Chromium from /usr/bin/chromium (from tests/e2e)
    sandboxed_server(module)   the deployed server command with its own HOME and TMPDIR, a trap
                               proxy in its environment and a tiny demo model; yields a
                               `Server` with the URL, pid and the directories to audit
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from normcore import NormativeModel, Schema
from normcore.synthetic import SyntheticSpec, idp_names, simulate

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
E2E = REPO / "tests" / "e2e"
sys.path.insert(0, str(E2E))  # streamlit_browser (wait_for_app, ARTIFACTS)


def _load_e2e_conftest():
    spec = importlib.util.spec_from_file_location("normcore_e2e_conftest", E2E / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_e2e = _load_e2e_conftest()

SPEC = SyntheticSpec(n_idps=3, n_sites=2)
TINY = dict(
    max_epochs=8, reference_samples=300, grid_points=11, sampling_steps=10,
    network=dict(width=32, depth=2),
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests here are `e2e` like those in tests/e2e, so `-m "not e2e"` skips them."""
    for item in items:
        if HERE in item.path.parents and item.path.name.endswith("_e2e.py"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def tiny_model() -> NormativeModel:
    """A small model on synthetic data: enough for the dashboard's code paths."""
    train = simulate(SPEC, 200, seed=11)
    schema = Schema(age="age", categorical=("sex", "site"), idps=tuple(idp_names(SPEC)),
                    id="subject_id")
    return NormativeModel(**TINY).fit(train, schema)


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
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
        at.run()
        if page is not None:
            at.switch_page(page)
            at.run()
        return at

    return open_app


# -------------------------------------------------------------------- sandboxed server


class TrapProxy:
    """A local TCP listener named as HTTP(S)_PROXY: any client honouring the proxy
    variables that tries to reach the internet connects here instead, and is counted."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(1.0)
                try:
                    self.requests.append(conn.recv(512))
                except OSError:
                    self.requests.append(b"")

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=2)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _hex_address(text: str) -> tuple[str, int]:
    address, port = text.split(":")
    if len(address) == 8:  # IPv4, little-endian
        ip = ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
    else:  # IPv6: four little-endian 32-bit words
        words = [address[i : i + 8] for i in range(0, 32, 8)]
        raw = b"".join(bytes.fromhex(w)[::-1] for w in words)
        ip = socket.inet_ntop(socket.AF_INET6, raw)
    return ip, int(port, 16)


def remote_peers(pid: int) -> set[tuple[str, int]]:
    """Remote (address, port) of every connected TCP socket the process holds, from /proc."""
    inodes = _socket_inodes(pid)
    peers = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) > 9 and parts[9] in inodes and parts[3] != "0A":  # 0A = LISTEN
                peers.add(_hex_address(parts[2]))
    return peers


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1") or ip.startswith(
        "::ffff:127."
    )


@dataclass
class Server:
    """The running dashboard and what the privacy checks need to know about it."""

    url: str
    pid: int
    home: Path
    tmp: Path
    started: float
    proxy: TrapProxy
    peers: set[tuple[str, int]] = field(default_factory=set)


def _write_tiny_demo(directory: Path) -> None:
    train = simulate(SPEC, 240, seed=21)
    schema = Schema(age="age", categorical=("sex", "site"), idps=tuple(idp_names(SPEC)),
                    id="subject_id")
    NormativeModel(**TINY).fit(train, schema).save(directory / "fcon1000.normcore")
    simulate(SPEC, 60, seed=22).to_csv(directory / "fcon1000_test.csv", index=False)


@pytest.fixture(scope="module")
def sandboxed_server(browser) -> Iterator[Server]:
    """The dashboard as deployed (repository root, .streamlit/config.toml), but with a
    fresh HOME and TMPDIR to audit afterwards, a trap proxy in the proxy variables, and a
    tiny demo model so that pages have something to draw. A background thread samples the
    server's TCP peers from /proc every 0.2 s for the outbound-connection check."""
    sandbox = Path(tempfile.mkdtemp(prefix="normcore-hardening-"))
    home, tmp, demo = sandbox / "home", sandbox / "tmp", sandbox / "demo"
    for d in (home, tmp, demo):
        d.mkdir()
    _write_tiny_demo(demo)
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
    port = _e2e._free_port()
    _e2e.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = _e2e.ARTIFACTS / "hardening-server.log"
    # Exactly the deployed command (Dockerfile CMD): no usage-statistics flag, so the
    # repository's .streamlit/config.toml is what keeps them off.
    command = [sys.executable, "serve.py",
               "--server.port", str(port), "--server.address", "127.0.0.1"]
    started = time.time()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    server = Server(url, process.pid, home, tmp, started, proxy)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                server.peers |= remote_peers(process.pid)
            except (OSError, ValueError):
                pass
            stop.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        deadline = time.monotonic() + _e2e.STARTUP_TIMEOUT_S
        while not _e2e._healthy(f"{url}/_stcore/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                output = log_path.read_text(errors="replace")[-4000:]
                pytest.fail(f"streamlit server did not start; its output:\n{output}",
                            pytrace=False)
            time.sleep(0.25)
        watcher.start()
        yield server
    finally:
        stop.set()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        proxy.close()
