"""Dashboard response times (issue 19 item 3): first chart on a fresh server, page switches.

Each repetition starts a fresh server (`streamlit run app.py`, or `python serve.py`, the
deployed command, with `--server serve`) on a free port, waits for its health check, then
drives it with headless Debian Chromium (Playwright, as tests/e2e does):

- first chart: from `page.goto` of the root URL to the first Plotly chart of the Centile
  fans page being drawn with its data (`.js-plotly-plot` with traces, inside an element
  that is not stale), and to
  the app being idle (script finished, nothing left to render);
- page switches: a click on each sidebar link to the page's own heading and its first
  fresh chart (or, for a page without a chart, to the app being idle), then to idle;
  every page twice: a first visit (this session's first run of the page, the server's
  caches as the earlier pages left them) and a second (served from the caches);
- while another user trains (`--training`): one session trains a model on the Model page
  (the demo's held-out table uploaded as its reference table, a 30 s time budget, 300
  reference samples per sex/site, 10 sampling steps, as the hardening test did) while
  a second switches between pages; the second's switch times against the same switches
  on an idle server;
- 5,000-column intake (`--wide`): a 5,000-column CSV (the reader's limit) uploaded on
  the Data page, from the upload to the mapping being drawn.

Times are medians over the repetitions; the server's CPU seconds (utime + stime from
/proc/<pid>/stat) are read beside each wall time, so a step's cost can be told apart from
waiting on a CPU shared with other jobs. The browser runs on the same CPU.

`--profile` instead runs the app's script in this process (Streamlit's AppTest, the
real demo model) under cProfile, per page, on a first run (fresh caches) and a second,
and prints where the time goes by stage (imports, bundle load, model numbers, figures).

    .venv/bin/python benchmarks/dashboard.py                 # 5 fresh servers
    .venv/bin/python benchmarks/dashboard.py --reps 1 --server serve --training --wide
    .venv/bin/python benchmarks/dashboard.py --profile
"""

from __future__ import annotations

import argparse
import functools
import importlib
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from streamlit_browser import _APP_IDLE_JS  # noqa: E402  (the e2e tests' idle test)

from benchmarks.load import CHROMIUM, CHROMIUM_ARGS, free_port, rss_mb  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
RESULTS = ROOT / "benchmarks" / "results"
DEMO_TEST = ROOT / "assets" / "demo" / "fcon1000_test.csv"
#: The sidebar's pages in the order the benchmark visits them (titles as in app.py).
PAGES = ["Dependence", "Diagnostics", "Individual", "Cohort", "Data", "Model", "Teach",
         "Centile fans"]
#: Pages that draw a chart with the demo model and no upload.
CHART_PAGES = {"Centile fans", "Dependence", "Diagnostics", "Individual", "Cohort"}
TIMEOUT_MS = 300_000

FRESH_CHART = (
    '[data-testid="stElementContainer"]:not([data-stale="true"]) '
    '[data-testid="stPlotlyChart"] .js-plotly-plot'
)
# The page's own heading, drawn by this run (not a stale one left by the previous page),
# and then its first fresh chart with data (not an empty frame drawn while the data is
# computed) or, for a page without charts, the app being idle.
_CONTENT_JS = """([title, chart]) => {
  const heads = [...document.querySelectorAll(
      '[data-testid="stElementContainer"]:not([data-stale="true"]) [data-testid="stHeading"]')];
  if (!heads.some(h => h.innerText.trim().startsWith(title))) return false;
  if (chart) return [...document.querySelectorAll(arguments_chart)].some(
      gd => (gd.data || []).length > 0);
  return (IDLE)();
}""".replace("arguments_chart", json.dumps(FRESH_CHART)).replace("IDLE", _APP_IDLE_JS)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(kind: str, port: int, log: Path) -> tuple[subprocess.Popen, float, float]:
    """A fresh dashboard server; returns it, the seconds to healthy and its CPU by then."""
    import urllib.request

    command = (["-m", "streamlit", "run", "app.py"] if kind == "streamlit" else ["serve.py"])
    env = {k: v for k, v in os.environ.items() if k != "NORMCORE_DEMO_DIR"}
    start = time.monotonic()
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, *command, "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
        )
    while time.monotonic() - start < 120:
        if process.poll() is not None:
            raise RuntimeError(f"server exited; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return process, time.monotonic() - start, cpu_seconds(process.pid)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not become healthy in 120 s")


class Clock:
    """Wall and server-CPU seconds of one step."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.monotonic(), cpu_seconds(self.pid)
        self.marks: dict[str, float] = {}
        return self

    def mark(self, name: str) -> None:
        self.marks[name] = round(time.monotonic() - self.wall0, 3)
        self.marks[f"{name}_cpu"] = round(cpu_seconds(self.pid) - self.cpu0, 3)

    def __exit__(self, *exc: object) -> None:
        return None


def idle(page, settle_ms: int = 150) -> None:
    page.wait_for_timeout(settle_ms)
    page.wait_for_function(_APP_IDLE_JS, timeout=TIMEOUT_MS)


def no_exception(page) -> int:
    return page.locator('[data-testid="stException"]').count()


def switch(page, pid: int, title: str) -> dict:
    """Click a sidebar link; seconds to the page's first chart (or content), then to idle."""
    with Clock(pid) as clock:
        page.locator('[data-testid="stSidebarNavLink"]', has_text=title).first.click()
        page.wait_for_function(_CONTENT_JS, arg=[title, title in CHART_PAGES],
                               timeout=TIMEOUT_MS)
        clock.mark("content")
        idle(page, settle_ms=50)
        clock.mark("idle")
    return {**clock.marks, "exceptions": no_exception(page)}


def first_visit(page, pid: int, url: str) -> dict:
    with Clock(pid) as clock:
        page.goto(url)
        page.wait_for_function(_CONTENT_JS, arg=["Centile fans", True], timeout=TIMEOUT_MS)
        clock.mark("chart")
        idle(page, settle_ms=50)
        clock.mark("idle")
    return {**clock.marks, "exceptions": no_exception(page)}


def one_rep(browser, kind: str, rep: int, args: argparse.Namespace) -> dict:
    port = free_port()
    server, ready_s, ready_cpu = start_server(kind, port, OUT / f"dashboard-server-{rep}.log")
    url = f"http://127.0.0.1:{port}"
    out: dict = {"server_ready_s": round(ready_s, 3), "server_ready_cpu": round(ready_cpu, 3)}
    try:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        out["first"] = first_visit(page, server.pid, url)
        out["rss_after_first_mb"] = round(rss_mb(server.pid), 1)
        out["switch_1"] = {t: switch(page, server.pid, t) for t in PAGES}
        out["switch_2"] = {t: switch(page, server.pid, t) for t in PAGES}
        context.close()
        if args.training:
            out["training"] = while_training(browser, server.pid, url)
        if args.wide:
            out["wide"] = wide_intake(browser, server.pid, url)
        out["rss_end_mb"] = round(rss_mb(server.pid), 1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return out


OTHER_USER = ["Centile fans", "Data", "Cohort", "Teach", "Dependence", "Individual"]


def while_training(browser, pid: int, url: str) -> dict:
    """The second user's page switches, on an idle server and while the first one trains."""
    trainer = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    other = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    for page in (trainer, other):
        page.goto(url)
        idle(page)
    for title in OTHER_USER:  # warm this session's caches, as the test did
        switch(other, pid, title)
    quiet = [switch(other, pid, t) for t in OTHER_USER]
    trainer.locator('[data-testid="stSidebarNavLink"]', has_text="Data").first.click()
    idle(trainer)
    trainer.locator('input[type="file"]').first.set_input_files(
        files=[{"name": "reference.csv", "mimeType": "text/csv",
                "buffer": sex_as_words(DEMO_TEST.read_bytes())}]
    )
    trainer.get_by_text("reference.csv:").first.wait_for(timeout=TIMEOUT_MS)
    idle(trainer)
    trainer.locator('[data-testid="stSidebarNavLink"]', has_text="Model").first.click()
    idle(trainer)
    trainer.get_by_text("Advanced options").last.click(timeout=TIMEOUT_MS)
    for key, value in (("train_epochs", "5000"), ("train_minutes", "0.5"),
                       ("train_reference", "300"), ("train_steps", "10")):
        box = trainer.locator(f".st-key-{key} input")
        box.fill(value)
        box.press("Enter")
        idle(trainer)
    trainer.locator(".st-key-train_start button").click()
    trainer.get_by_text("Training: epoch").wait_for(timeout=TIMEOUT_MS)
    busy, phases = [], []
    while len(busy) < 36:
        text = trainer.locator("body").inner_text()
        if "Training finished" in text or "Training failed" in text:
            break
        phase = "reference" if "centile table" in text else "train"
        for title in OTHER_USER:
            phases.append(phase)
            busy.append(switch(other, pid, title))
    trainer.get_by_text("Training finished").wait_for(timeout=TIMEOUT_MS)
    trainer.context.close()
    other.context.close()
    return {"quiet": quiet, "busy": busy, "phases": phases}


def sex_as_words(data: bytes) -> bytes:
    import pandas as pd

    df = pd.read_csv(io.BytesIO(data))
    df["sex"] = df["sex"].map({0: "F", 1: "M"})
    return df.to_csv(index=False).encode()


def wide_table() -> bytes:
    """200 people x 5,000 columns (the reader's limit): id, age, sex, site, 4,996 numbers."""
    import numpy as np
    import pandas as pd

    from normcore.data import MAX_COLUMNS

    rng = np.random.default_rng(0)
    n = 200
    values = rng.normal(1000, 100, (n, MAX_COLUMNS - 4)).round(2)
    df = pd.DataFrame(values, columns=[f"m{i:04d}" for i in range(MAX_COLUMNS - 4)])
    df.insert(0, "site", "A")
    df.insert(0, "sex", rng.choice(["F", "M"], n))
    df.insert(0, "age", rng.uniform(20, 80, n).round(1))
    df.insert(0, "sub_id", [f"w{i}" for i in range(n)])
    return df.to_csv(index=False).encode()


def wide_intake(browser, pid: int, url: str) -> dict:
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.goto(url)
    idle(page)
    page.locator('[data-testid="stSidebarNavLink"]', has_text="Data").first.click()
    idle(page)
    data = wide_table()
    with Clock(pid) as clock:
        page.locator('input[type="file"]').first.set_input_files(
            files=[{"name": "wide.csv", "mimeType": "text/csv", "buffer": data}]
        )
        page.get_by_text("wide.csv: 200 rows").first.wait_for(timeout=TIMEOUT_MS)
        clock.mark("read")
        idle(page)
        clock.mark("idle")
    result = {**clock.marks, "bytes": len(data), "exceptions": no_exception(page)}
    page.context.close()
    return result


# ------------------------------------------------------------------------------ summary


def med(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else float("nan")


def summarise(reps: list[dict]) -> dict:
    summary = {
        "server_ready_s": med([r["server_ready_s"] for r in reps]),
        "first_chart_s": med([r["first"]["chart"] for r in reps]),
        "first_chart_cpu": med([r["first"]["chart_cpu"] for r in reps]),
        "first_idle_s": med([r["first"]["idle"] for r in reps]),
        "first_idle_cpu": med([r["first"]["idle_cpu"] for r in reps]),
        "slowest_first_chart_s": max(r["first"]["chart"] for r in reps),
        "exceptions": sum(r["first"]["exceptions"] for r in reps)
        + sum(s["exceptions"] for r in reps for k in ("switch_1", "switch_2")
              for s in r[k].values()),
        "pages": {},
    }
    for title in PAGES:
        row = {}
        for visit in ("switch_1", "switch_2"):
            for mark in ("content", "content_cpu", "idle", "idle_cpu"):
                row[f"{visit}_{mark}"] = med([r[visit][title][mark] for r in reps])
        summary["pages"][title] = row
    for visit in ("switch_1", "switch_2"):
        allv = [r[visit][t]["content"] for r in reps for t in PAGES]
        summary[f"{visit}_median_s"] = med(allv)
        summary[f"{visit}_slowest_s"] = max(allv)
    trained = [r["training"] for r in reps if "training" in r]
    if trained:
        quiet = [s["content"] for t in trained for s in t["quiet"]]
        busy = [s["content"] for t in trained for s in t["busy"]]
        ref = [s["content"] for t in trained for s, p in zip(t["busy"], t["phases"])
               if p == "reference"]
        summary["training"] = {
            "quiet_median_s": med(quiet), "quiet_slowest_s": max(quiet),
            "busy_median_s": med(busy), "busy_slowest_s": max(busy) if busy else None,
            "busy_n": len(busy), "busy_table_phase_median_s": med(ref), "busy_table_n": len(ref),
            "exceptions": sum(s["exceptions"] for t in trained for s in t["busy"]),
        }
    wide = [r["wide"] for r in reps if "wide" in r]
    if wide:
        summary["wide"] = {"read_s": med([w["read"] for w in wide]),
                           "read_cpu": med([w["read_cpu"] for w in wide]),
                           "idle_s": med([w["idle"] for w in wide]),
                           "exceptions": sum(w["exceptions"] for w in wide)}
    return summary


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [
        f"**Dashboard response** ({result['what']}; load average at start "
        f"{result['load_average_start']}, at end {result['load_average_end']}).",
        "",
        f"Fresh server healthy after {s['server_ready_s']} s. First fan chart after the "
        f"page load: **{s['first_chart_s']} s** median (slowest {s['slowest_first_chart_s']} s; "
        f"server CPU {s['first_chart_cpu']} s); page idle at {s['first_idle_s']} s "
        f"(CPU {s['first_idle_cpu']} s). Page switches, to the page's first chart (or its "
        f"content): first visit median **{s['switch_1_median_s']} s** (slowest "
        f"{s['switch_1_slowest_s']} s), second visit median **{s['switch_2_median_s']} s** "
        f"(slowest {s['switch_2_slowest_s']} s). Exceptions shown: {s['exceptions']}.",
        "",
        "| page | 1st visit: chart s | CPU s | idle s | 2nd visit: chart s | CPU s | idle s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for title, row in s["pages"].items():
        lines.append(
            f"| {title} | {row['switch_1_content']} | {row['switch_1_content_cpu']} | "
            f"{row['switch_1_idle']} | {row['switch_2_content']} | {row['switch_2_content_cpu']} "
            f"| {row['switch_2_idle']} |"
        )
    if "training" in s:
        t = s["training"]
        lines += [
            "",
            f"While another user trains (a 30 s training budget, then its centile table): the "
            f"other user's page switches median **{t['busy_median_s']} s**, slowest "
            f"{t['busy_slowest_s']} s over {t['busy_n']} switches ({t['busy_table_n']} during "
            f"the table phase, median {t['busy_table_phase_median_s']} s); the same switches "
            f"on a quiet server {t['quiet_median_s']} s (slowest {t['quiet_slowest_s']} s). "
            f"Exceptions: {t['exceptions']}.",
        ]
    if "wide" in s:
        w = s["wide"]
        lines += [
            "",
            f"5,000-column intake (200 rows, Data page upload to the table read and shown): "
            f"**{w['read_s']} s** (server CPU {w['read_cpu']} s), idle at {w['idle_s']} s. "
            f"Exceptions: {w['exceptions']}.",
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    reps = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        for rep in range(args.reps):
            reps.append(one_rep(browser, args.server, rep, args))
            first = reps[-1]["first"]
            print(f"rep {rep + 1}: ready {reps[-1]['server_ready_s']} s, first chart "
                  f"{first['chart']} s (CPU {first['chart_cpu']}), switches "
                  + ", ".join(f"{t} {v['content']}" for t, v in reps[-1]["switch_1"].items()),
                  file=sys.stderr, flush=True)
        browser.close()
    command = "streamlit run app.py" if args.server == "streamlit" else "python serve.py"
    return {
        "what": f"{args.reps} fresh servers (`{command}`), one headless Chromium session each; "
                f"medians over the servers",
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "summary": summarise(reps),
        "reps": reps,
    }


# ------------------------------------------------------------------------------ profile


class StageClock:
    """Wall and CPU seconds of the dashboard's script path, by stage: the functions of each
    stage are wrapped in place (pages re-import them on every run), and only the outermost
    wrapped call is counted (a score inside an evaluation is the evaluation's)."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}
        self._depth = threading.local()

    def wrap(self, owner: object, name: str, stage: str) -> None:
        func = getattr(owner, name)
        raw = func.__func__ if isinstance(func, classmethod) else func

        @functools.wraps(raw)
        def timed(*args: object, **kwargs: object) -> object:
            depth = getattr(self._depth, "n", 0)
            self._depth.n = depth + 1
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return raw(*args, **kwargs)
            finally:
                self._depth.n = depth
                if depth == 0:
                    spent = self.seconds.setdefault(stage, [0.0, 0.0])
                    spent[0] += time.perf_counter() - wall
                    spent[1] += time.thread_time() - cpu

        setattr(owner, name, timed)

    def take(self) -> dict[str, dict[str, float]]:
        out = {k: {"wall_s": round(v[0], 3), "cpu_s": round(v[1], 3)}
               for k, v in self.seconds.items()}
        self.seconds = {}
        return out


def profile_pages() -> dict:
    """The app's script in this process (AppTest, the real demo), each page on a first run
    (fresh caches) and a second: total wall and script-thread CPU seconds, and by stage."""
    import inspect

    os.environ.pop("NORMCORE_DEMO_DIR", None)
    imports = {}
    for stage, modules in (
        ("import streamlit", ["streamlit"]),
        ("import pages' modules", ["pandas", "plotly.graph_objects", "normcore.explore",
                                   "normcore.figures.charts", "normcore.figures.diagnostics"]),
        ("import normcore.model", ["normcore.model"]),
        ("import pages.common", ["pages.common"]),
    ):
        wall, cpu = time.perf_counter(), time.process_time()
        for module in modules:
            importlib.import_module(module)
        imports[stage] = {"wall_s": round(time.perf_counter() - wall, 3),
                          "cpu_s": round(time.process_time() - cpu, 3)}
    from streamlit.delta_generator import DeltaGenerator
    from streamlit.testing.v1 import AppTest

    import normcore.evaluate
    import normcore.figures.charts
    import normcore.figures.diagnostics
    from normcore.model import NormativeModel

    clock = StageClock()
    clock.wrap(NormativeModel, "from_bytes", "bundle load")
    for name in ("score", "centiles", "sample", "deviation", "check"):
        clock.wrap(NormativeModel, name, f"model.{name}")
    clock.wrap(normcore.evaluate, "evaluate", "evaluate (Diagnostics)")
    for module in (normcore.figures.charts, normcore.figures.diagnostics):
        for name, func in inspect.getmembers(module, inspect.isfunction):
            if func.__module__ == module.__name__ and not name.startswith("_"):
                clock.wrap(module, name, "figures")
    clock.wrap(DeltaGenerator, "plotly_chart", "st.plotly_chart (serialise)")
    clock.wrap(DeltaGenerator, "dataframe", "st.dataframe (serialise)")

    out = {"imports": imports}
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    for visit in (1, 2):
        for title in ["Centile fans", *PAGES[:-1]]:
            wall, cpu = time.perf_counter(), time.process_time()
            if title == "Centile fans" and visit == 1:
                app.run()
            else:
                app.switch_page(f"pages/{page_file(title)}").run()
            out[f"{title} #{visit}"] = {
                "wall_s": round(time.perf_counter() - wall, 3),
                "cpu_s": round(time.process_time() - cpu, 3),
                "exceptions": len(app.exception),
                "stages": clock.take(),
            }
            print(title, visit, out[f"{title} #{visit}"], file=sys.stderr, flush=True)
    return out


def page_file(title: str) -> str:
    return {"Centile fans": "fans.py"}.get(title, f"{title.lower()}.py")


def write_results(runs: list[tuple[str, Path]], profile: Path | None, note: str = "") -> None:
    """benchmarks/results/dashboard.md (and .json): each labelled run's table, then the
    script path's profile by stage, through common.write_section (provenance line)."""
    from benchmarks.common import write_section

    parts = ["## Dashboard response (`benchmarks/dashboard.py`, issue 19 item 3)", ""]
    if note:
        parts += [note, ""]
    data = {}
    for label, path in runs:
        result = json.loads(path.read_text())
        data[label] = result
        parts += [f"### {label}", "", markdown(result), ""]
    if profile is not None:
        stages = json.loads(profile.read_text())
        data["profile"] = stages
        parts += [
            "### Where a page's time goes (server side)",
            "",
            "The app's script in one process (Streamlit's AppTest, the real demo model), each "
            "page on its first run (fresh caches) and its second; wall and CPU seconds of the "
            "script, and of its stages (outermost calls only). Imports, in that process "
            "before the first run: "
            + ", ".join(f"{k} {v['cpu_s']} s CPU" for k, v in stages["imports"].items())
            + ".",
            "",
            "| page, run | wall s | CPU s | stages (CPU s) |",
            "| --- | ---: | ---: | --- |",
        ]
        for name, row in stages.items():
            if name == "imports":
                continue
            spent = "; ".join(f"{k} {v['cpu_s']}" for k, v in row["stages"].items()) or "—"
            parts.append(f"| {name} | {row['wall_s']} | {row['cpu_s']} | {spent} |")
    write_section("dashboard", "\n".join(parts), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--server", choices=["streamlit", "serve"], default="streamlit")
    parser.add_argument("--training", action="store_true")
    parser.add_argument("--wide", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT / "dashboard.json")
    parser.add_argument("--write", nargs="+", metavar="LABEL=RUN.json",
                        help="write results/dashboard.md from these runs' JSON files")
    parser.add_argument("--with-profile", type=Path, help="a --profile run's JSON, for --write")
    parser.add_argument("--note", default="", help="a paragraph under the title, for --write")
    args = parser.parse_args()
    if args.write:
        runs = [(label, Path(path)) for label, path in (w.split("=", 1) for w in args.write)]
        write_results(runs, args.with_profile, args.note)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.profile:
        result = profile_pages()
        args.out.with_name(args.out.stem + "-profile.json").write_text(
            json.dumps(result, indent=2))
        return
    result = run(args)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
