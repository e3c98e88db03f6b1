"""Load: N people at once scoring a 1,000-person cohort each against the demo model.

Starts `python serve.py` (the deployed command, repository config) on a free port,
then runs `--rounds` rounds; in each, `--sessions` people (all at once) open the
dashboard, open the Data page, upload their own 1,000-person cohort there and open the
Cohort page, which scores it. Every session's cohort is different (fresh ids, jittered
values), so no one is served from another's cache. Measured: each step's response time
(request until the page's script has finished), the slowest response, and the server's
resident memory (VmRSS from /proc/<pid>/status) before, at its peak during, and after each
round, once the round's sessions are closed and the server has dropped them (`--settle`,
past Streamlit's disconnected-session TTL).

Two kinds of people (`--client`):
- `server` (default; results/load.json): `ServerSession` sends the page's own websocket
  messages and HTTP upload, without a browser: what the server answers ten people whose
  browsers run on their own computers.
- `browser` (results/load_browser.json): headless Debian Chromium contexts via
  Playwright, on this same CPU, so the times include ten browsers loading Plotly and
  drawing the Cohort page's charts on the server's cores: an upper bound.

    .venv/bin/python benchmarks/load.py                 # 10 sessions x 3 rounds
    .venv/bin/python benchmarks/load.py --client browser
    .venv/bin/python benchmarks/load.py --sessions 2 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
CHROMIUM = "/usr/bin/chromium"
SESSION_TTL_S = 120.0
"""Streamlit keeps a closed browser's session (its state and session-scoped caches) this
long for a reconnection (server.disconnectedSessionTTL, default), then drops it: memory
read sooner still holds the round's sessions."""
CLIENTS = {
    "server": "sessions speaking Streamlit's websocket protocol (ServerSession: the page's "
              "own messages, no browser)",
    "browser": "browser sessions (Playwright contexts, headless Chromium)",
}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from streamlit_browser import _APP_IDLE_JS  # noqa: E402  (the e2e tests' idle test)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB, from /proc (psutil is not a dependency)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class MemoryWatch:
    """Samples a process's VmRSS every 0.25 s; `peak()` since the last `reset()`."""

    def __init__(self, pid: int) -> None:
        self.pid, self._peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._peak = max(self._peak, rss_mb(self.pid))
            except (OSError, RuntimeError):
                return
            self._stop.wait(0.25)

    def reset(self) -> None:
        self._peak = rss_mb(self.pid)

    def peak(self) -> float:
        return self._peak

    def stop(self) -> None:
        self._stop.set()


def cohort(base: pd.DataFrame, n: int, seed: int, tag: str) -> bytes:
    """n people drawn from the demo's held-out set, with new ids and 0.5% value jitter."""
    rng = np.random.default_rng(seed)
    df = base.iloc[rng.integers(0, len(base), n)].reset_index(drop=True)
    numeric = [c for c in df.columns if c not in ("sub_id", "age", "sex", "site")]
    df[numeric] = df[numeric] * rng.normal(1.0, 0.005, (n, len(numeric)))
    df["sub_id"] = [f"{tag}-{i:04d}" for i in range(n)]
    # Sex as words: a bare 0/1 code from another table is asked about, never assumed.
    df["sex"] = df["sex"].map({0: "F", 1: "M"})
    return df.to_csv(index=False).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "NORMCORE_DEMO_DIR"}
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "serve.py", "--server.port", str(port),
             "--server.address", "127.0.0.1"],
            cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("server did not become healthy in 120 s")


async def idle(page, timeout_ms: float) -> None:
    await page.wait_for_timeout(150)
    await page.wait_for_function(_APP_IDLE_JS, timeout=timeout_ms)


async def one_session(
    browser, url: str, data: bytes, name: str, n: int, step_timeout: float = 600.0
) -> dict:
    """One person: open, upload, score. Returns seconds per step (or the error); a step
    that takes longer than `step_timeout` seconds fails the session."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(step_timeout * 1000)
    page = await context.new_page()
    times: dict[str, float] = {}
    limit = step_timeout * 1000

    async def idle_page() -> None:
        await idle(page, limit)

    try:
        start = time.monotonic()
        await page.goto(url)
        await idle_page()
        times["open"] = time.monotonic() - start
        start = time.monotonic()
        await page.locator('[data-testid="stSidebarNavLink"]', has_text="Data").first.click()
        await idle_page()
        times["data_page"] = time.monotonic() - start
        start = time.monotonic()
        await page.locator('input[type="file"]').first.set_input_files(
            files=[{"name": name, "mimeType": "text/csv", "buffer": data}]
        )
        await page.get_by_text(f"Ready to score {n} people").wait_for(timeout=limit)
        await idle_page()
        times["upload_and_check"] = time.monotonic() - start
        start = time.monotonic()
        await page.locator('[data-testid="stSidebarNavLink"]', has_text="Cohort").first.click()
        await page.get_by_text(f"Scoring {n} people").wait_for(timeout=limit)
        await idle_page()
        times["score_cohort"] = time.monotonic() - start
        errors = await page.locator('[data-testid="stException"]').count()
        return {"seconds": times, "exceptions": errors}
    except Exception as err:  # a failed session is a result to report, not a crash
        return {"seconds": times, "error": f"{type(err).__name__}: {str(err)[:200]}"}
    finally:
        await context.close()


class ServerSession:
    """One person talking to the server the way Streamlit's own page does, without a browser.

    Why: the browser sessions of `one_session` run on the server's two cores, so ten of
    them opening at once measure mostly ten Chromiums compiling Plotly. This client sends
    the same messages the page sends over the same websocket (`BackMsg` protobufs: rerun a
    page, ask for upload URLs; the file itself by HTTP PUT with the XSRF token, as the page
    does) and waits, like the browser's idle test, until the server says the page's script
    has finished. So it measures what ten users on their own computers would wait for on
    the server, rendering excluded.
    """

    def __init__(self, base: str) -> None:
        self.base, self.ws, self.session_id, self.xsrf = base, None, "", ""
        self.pages: dict[str, tuple[str, str]] = {}
        self.uploader = ""

    async def connect(self) -> None:
        from websockets.asyncio.client import connect

        def cookie() -> str:
            with urllib.request.urlopen(self.base + "/_stcore/health", timeout=60) as response:
                for header in response.headers.get_all("Set-Cookie") or []:
                    name, _, rest = header.partition("=")
                    if name.strip() == "_streamlit_xsrf":
                        return rest.split(";", 1)[0]
            return ""

        self.xsrf = await asyncio.to_thread(cookie)
        self.ws = await connect(
            self.base.replace("http", "ws", 1) + "/_stcore/stream",
            subprotocols=["streamlit", self.xsrf] if self.xsrf else ["streamlit"],
            additional_headers={"Cookie": f"_streamlit_xsrf={self.xsrf}"},
            origin=self.base, max_size=None, open_timeout=600,
        )

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def open(self) -> list:
        """Connect and run the default page, as a browser opening the dashboard does."""
        await self.connect()
        return await self.run()

    async def _receive(self):
        """The server's next message (a `ForwardMsg`)."""
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        forward = ForwardMsg()
        forward.ParseFromString(await self.ws.recv())
        return forward

    async def run(self, page: str = "", widgets: list | None = None) -> list:
        """Rerun `page` (title; '' = the default page) with these widget states; return
        the elements the server sent, once its script has finished."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        msg = BackMsg()
        state = msg.rerun_script
        state.SetInParent()  # an empty ClientState is still a rerun
        if page:
            state.page_script_hash, state.page_name = self.pages[page]
        for widget in widgets or []:
            state.widget_states.widgets.append(widget)
        await self.ws.send(msg.SerializeToString())
        elements = []
        while True:
            forward = await self._receive()
            kind = forward.WhichOneof("type")
            if kind == "new_session":
                self.session_id = forward.new_session.initialize.session_id
            elif kind == "navigation":
                for app_page in forward.navigation.app_pages:
                    self.pages[app_page.page_name] = (
                        app_page.page_script_hash, app_page.url_pathname
                    )
            elif kind == "delta" and forward.delta.WhichOneof("type") == "new_element":
                element = forward.delta.new_element
                elements.append(element)
                if element.WhichOneof("type") == "file_uploader":
                    self.uploader = element.file_uploader.id
            elif kind == "script_finished" and forward.script_finished in (
                ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_WITH_COMPILE_ERROR
            ):
                return elements

    async def upload(self, name: str, data: bytes) -> list:
        """Upload one file to the page's uploader and rerun the page with it."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        msg = BackMsg()
        msg.file_urls_request.request_id = name
        msg.file_urls_request.file_names.append(name)
        msg.file_urls_request.session_id = self.session_id
        await self.ws.send(msg.SerializeToString())
        forward = await self._receive()
        while forward.WhichOneof("type") != "file_urls_response":
            forward = await self._receive()
        urls = forward.file_urls_response.file_urls[0]
        boundary = "normcoreloadboundary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"'
            f"\r\nContent-Type: text/csv\r\n\r\n"
        ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(
            self.base + urls.upload_url, data=body, method="PUT",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                     "X-Xsrftoken": self.xsrf, "Cookie": f"_streamlit_xsrf={self.xsrf}"},
        )
        await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=600).read())
        widget = WidgetState(id=self.uploader)
        info = widget.file_uploader_state_value.uploaded_file_info.add()
        info.name, info.size, info.file_id = name, len(data), urls.file_id
        info.file_urls.CopyFrom(urls)
        return await self.run("Data", [widget])


def _texts(elements: list) -> str:
    """The text of every markdown and alert element, one per line."""
    out = []
    for element in elements:
        kind = element.WhichOneof("type")
        if kind == "markdown":
            out.append(element.markdown.body)
        elif kind == "alert":
            out.append(element.alert.body)
    return "\n".join(out)


async def one_server_session(url: str, data: bytes, name: str, n: int,
                             step_timeout: float = 600.0) -> dict:
    """`one_session`'s four steps by `ServerSession`: the server's answer times."""
    person = ServerSession(url)
    times: dict[str, float] = {}

    async def step(label: str, action, expect: str | None = None) -> list:
        start = time.monotonic()
        elements = await asyncio.wait_for(action, step_timeout)
        times[label] = time.monotonic() - start
        if expect is not None and expect not in _texts(elements).replace("*", ""):
            raise RuntimeError(f"{label}: no '{expect}' on the page")
        return elements

    try:
        await step("open", person.open())
        await step("data_page", person.run("Data"))
        await step("upload_and_check", person.upload(name, data), f"Ready to score {n} people")
        elements = await step("score_cohort", person.run("Cohort"), f"Scoring {n} people")
        errors = sum(e.WhichOneof("type") == "exception" for e in elements)
        return {"seconds": times, "exceptions": errors}
    except Exception as err:  # a failed session is a result to report, not a crash
        return {"seconds": times, "error": f"{type(err).__name__}: {str(err)[:200]}"}
    finally:
        await person.close()


async def run(args: argparse.Namespace) -> dict:
    from contextlib import AsyncExitStack

    base = pd.read_csv(ROOT / "assets" / "demo" / "fcon1000_test.csv")
    port = free_port()
    OUT.mkdir(parents=True, exist_ok=True)
    server = start_server(port, OUT / "load-server.log")
    url = f"http://127.0.0.1:{port}"
    watch = MemoryWatch(server.pid)
    rounds = []
    try:
        async with AsyncExitStack() as stack:
            if args.client == "browser":
                from playwright.async_api import async_playwright

                playwright = await stack.enter_async_context(async_playwright())
                browser = await playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                stack.push_async_callback(browser.close)

                def session(data: bytes, name: str, n: int):
                    return one_session(browser, url, data, name, n, args.step_timeout)
            else:

                def session(data: bytes, name: str, n: int):
                    return one_server_session(url, data, name, n, args.step_timeout)

            # one warm-up visit loads the demo model into the shared cache
            warm = await session(cohort(base, 50, 0, "WARM"), "warm.csv", 50)
            rss_start = rss_mb(server.pid)
            for r in range(args.rounds):
                payloads = [
                    cohort(base, args.people, 1000 * (r + 1) + s, f"R{r}S{s}")
                    for s in range(args.sessions)
                ]
                watch.reset()
                before = rss_mb(server.pid)
                cpu_before = cpu_seconds(server.pid)
                start = time.monotonic()
                results = await asyncio.gather(*[
                    session(data, f"round{r}_session{s}.csv", args.people)
                    for s, data in enumerate(payloads)
                ])
                wall = time.monotonic() - start
                server_cpu = cpu_seconds(server.pid) - cpu_before
                await asyncio.sleep(args.settle)  # let closed sessions be dropped
                rounds.append({
                    "round": r + 1,
                    "wall_s": round(wall, 1),
                    "server_cpu_s": round(server_cpu, 1),
                    "rss_before_mb": round(before, 1),
                    "rss_peak_mb": round(watch.peak(), 1),
                    "rss_after_mb": round(rss_mb(server.pid), 1),
                    "sessions": results,
                })
                print(json.dumps({k: v for k, v in rounds[-1].items() if k != "sessions"}),
                      flush=True)
    finally:
        watch.stop()
        server.terminate()
        server.wait(timeout=30)
    steps = [s["seconds"] for rnd in rounds for s in rnd["sessions"]]
    failed = [s for rnd in rounds for s in rnd["sessions"] if "error" in s or s["exceptions"]]
    slowest = {
        step: round(max(s.get(step, float("nan")) for s in steps), 2)
        for step in ("open", "data_page", "upload_and_check", "score_cohort")
    }
    median = {
        step: round(float(np.median([s[step] for s in steps if step in s])), 2)
        for step in slowest
    }
    return {
        "what": f"{args.sessions} concurrent {CLIENTS[args.client]} x {args.rounds} rounds, "
                f"each uploading and scoring its own {args.people}-person cohort against the "
                "demo model",
        "client": args.client,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "warm_up": warm,
        "rss_after_warm_up_mb": round(rss_start, 1),
        "slowest_s": slowest,
        "median_s": median,
        "failed_sessions": len(failed),
        "rounds": rounds,
    }


def markdown(result: dict) -> str:
    lines = [
        f"**Load** ({result['what']}; {result['machine']['cpus']} CPUs, shared).",
        "",
        "| step | median s | slowest s |",
        "| --- | ---: | ---: |",
        *[f"| {k} | {result['median_s'][k]} | {result['slowest_s'][k]} |"
          for k in result["slowest_s"]],
        "",
        f"Server memory (VmRSS) after loading the demo model: "
        f"{result['rss_after_warm_up_mb']:.0f} MB.",
        "",
        "| round | wall s | server CPU s | RSS before MB | RSS peak MB | RSS after MB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        *[f"| {r['round']} | {r['wall_s']} | {r.get('server_cpu_s', '—')} "
          f"| {r['rss_before_mb']:.0f} | {r['rss_peak_mb']:.0f} | {r['rss_after_mb']:.0f} |"
          for r in result["rounds"]],
        "",
        f"Failed sessions: {result['failed_sessions']}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--settle", type=float, default=SESSION_TTL_S + 10.0,
                        help="seconds to wait after a round before reading memory (default: "
                             "until the server has dropped the round's closed sessions)")
    parser.add_argument("--step-timeout", type=float, default=600.0,
                        help="seconds after which a step fails its session")
    parser.add_argument("--client", choices=tuple(CLIENTS), default="server",
                        help="server: the page's messages without a browser (what the server "
                             "answers); browser: headless Chromium on this same CPU")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/load.json (server client) or "
                             "load_browser.json")
    args = parser.parse_args()
    args.out = args.out or ROOT / "benchmarks" / "results" / (
        "load.json" if args.client == "server" else "load_browser.json"
    )
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    (args.out.with_suffix(".md")).write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
