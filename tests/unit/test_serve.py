"""serve.py's memory keeping: Streamlit's per-run garbage collection is off in the
repository's config, so serve.py's own pass must be what frees ended sessions' cycles."""

import gc
import os
import subprocess
import sys
import time
import tomllib
import weakref
from pathlib import Path

import serve

ROOT = Path(__file__).resolve().parents[2]


class _Node:
    """An object that can sit in a reference cycle and be watched by a weak reference."""

    other: object = None


def test_the_repository_config_turns_off_the_collection_after_every_run() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False


def test_tidy_memory_frees_a_reference_cycle_that_nothing_else_collects() -> None:
    enabled = gc.isenabled()
    gc.disable()  # only the pass under test may collect
    try:
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        watched = weakref.ref(a)
        del a, b
        assert watched() is not None  # a cycle outlives its names without a collection
        serve.tidy_memory()
        assert watched() is None
    finally:
        if enabled:
            gc.enable()


def test_tidy_memory_every_runs_the_pass_on_its_clock_until_stopped(monkeypatch) -> None:
    passes: list[float] = []
    monkeypatch.setattr(serve, "tidy_memory", lambda: passes.append(time.monotonic()))
    stop = serve.tidy_memory_every(0.01)
    deadline = time.monotonic() + 5
    while len(passes) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    time.sleep(0.05)
    done = len(passes)
    time.sleep(0.1)
    assert done >= 3
    assert len(passes) == done  # stopped: no pass after the event is set


def test_arrow_allocates_with_malloc_once_serve_has_run(tmp_path) -> None:
    """Memory pyarrow's bundled allocator gets back stays with it; serve.py hands Arrow
    to malloc, whose free pages `tidy_memory` returns. Checked in a fresh interpreter:
    pyarrow reads the choice when it is first imported."""
    script = (
        "import serve; serve.arrow_on_malloc(); import pyarrow; "
        "print(pyarrow.default_memory_pool().backend_name)"
    )
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
        check=True, timeout=120,
    )
    assert out.stdout.strip() == "system"
