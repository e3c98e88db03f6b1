"""serve.py's memory keeping: Streamlit's per-run garbage collection is off in the
repository's config, so serve.py's own pass must be what frees ended sessions' cycles."""

import gc
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
