"""Load: N people at once scoring a 1,000-person cohort each against the demo model.

Starts `python serve.py` (the deployed command, repository config) on a free port,
then runs `--rounds` rounds; in each, `--sessions` browser contexts (headless Debian
Chromium via Playwright's async API, all at once) open the dashboard, upload their own
1,000-person cohort on the Data page and open the Cohort page, which scores it. Every
session's cohort is different (fresh ids, jittered values), so no one is served from
another's cache. Measured: each step's response time (click/upload until the app is
idle), the slowest response, and the server's resident memory (VmRSS from
/proc/<pid>/status) before, at its peak during, and after each round, once the round's
browser contexts are closed and the server has dropped their sessions (`--settle`, past
Streamlit's disconnected-session TTL). Results: benchmarks/results/load.json and a
markdown table.

The browsers run on the same CPU as the server, so the times include rendering the
Cohort page's charts in ten browsers: an upper bound on what a server alone would show.

    .venv/bin/python benchmarks/load.py                 # 10 sessions x 3 rounds
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


async def run(args: argparse.Namespace) -> dict:
    from playwright.async_api import async_playwright

    base = pd.read_csv(ROOT / "assets" / "demo" / "fcon1000_test.csv")
    port = free_port()
    OUT.mkdir(parents=True, exist_ok=True)
    server = start_server(port, OUT / "load-server.log")
    url = f"http://127.0.0.1:{port}"
    watch = MemoryWatch(server.pid)
    rounds = []
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            # one warm-up visit loads the demo model into the shared cache
            warm = await one_session(browser, url, cohort(base, 50, 0, "WARM"), "warm.csv", 50,
                                     args.step_timeout)
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
                    one_session(browser, url, data, f"round{r}_session{s}.csv", args.people,
                                args.step_timeout)
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
            await browser.close()
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
        "what": f"{args.sessions} concurrent browser sessions (Playwright contexts, headless "
                f"Chromium) x {args.rounds} rounds, each uploading and scoring its own "
                f"{args.people}-person cohort against the demo model",
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
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    (args.out.with_suffix(".md")).write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
