"""`python serve.py [streamlit options]`: the dashboard, the demo ready before it opens,
memory that settles after sessions end (`few_malloc_arenas`, `arrow_on_malloc`,
`tidy_memory_every`), and no request off the machine (`no_address_lookup`).

`streamlit run app.py` imports what the pages need when the first browser session runs
the script, and that session then computes the demo's first chart, so the first visitor
would wait for both (benchmarks/RESULTS.md, "Dashboard"). This imports the pages' shared
module, computes the demo's first page and builds its network
(`pages.common.warm_before_opening`; Streamlit's caches live in the process and are keyed
by function, so results cached before its server starts are the ones its sessions
find), then runs the same Streamlit command.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

APP = Path(__file__).resolve().parent / "app.py"

#: Streamlit's loggers that warn when a cached function runs outside a browser session,
#: as the warm-up's do by design.
OUTSIDE_A_SESSION = (
    "streamlit.runtime.caching.cache_data_api",
    "streamlit.runtime.scriptrunner_utils.script_run_context",
)


def warm() -> None:
    """`warm_before_opening`, now. A failure is only logged: the pages compute the same
    things and say what went wrong there."""
    loggers = [logging.getLogger(name) for name in OUTSIDE_A_SESSION]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    print("normcore: preparing the demo model before the dashboard opens ...", file=sys.stderr)
    try:
        from pages.common import warm_before_opening

        warm_before_opening()
    except Exception as err:  # noqa: BLE001  (the page will say what went wrong)
        logging.getLogger("normcore").warning("preparing the demo failed: %s", err)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def no_address_lookup() -> None:
    """Make Streamlit's lookup of the machine's public address answer "unknown" without
    asking anyone.

    Why: listening on every interface (the Dockerfile's 0.0.0.0), Streamlit asks
    checkip.amazonaws.com for that address, to print an "External URL" at start-up and
    to accept it as a websocket origin; the dashboard sends nothing off the machine,
    ever. "Unknown" is what Streamlit answers offline: the banner shows the local and
    network URLs; pages served by the dashboard itself connect whatever host name they
    were opened by (same origin), and only another site's page at the public address
    loses that allowance (`server.corsAllowedOrigins` names such sites)."""
    from streamlit import net_util

    net_util.get_external_ip = lambda: None


M_ARENA_MAX = -8
"""glibc's `mallopt` parameter for the most malloc arenas a process may have (malloc.h)."""


def _glibc(function: str) -> Any:
    """A glibc function, or None on a system without glibc (its memory tuning is then
    skipped)."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), function)
    except (OSError, AttributeError):
        return None


def few_malloc_arenas() -> None:
    """Let glibc's malloc keep at most two arenas (on other C libraries: nothing).

    Why: glibc gives threads that allocate at once arenas of their own, up to eight per
    core, and Streamlit runs every session's script in its own thread; what sessions
    free when they end then stays scattered over many arenas, and the server's memory
    grows round after round of the same work (benchmarks/RESULTS.md, "Load")."""
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt(M_ARENA_MAX, 2)


TIDY_EVERY_S = 30.0
"""Seconds between two passes of `tidy_memory` (`tidy_memory_every`)."""


def tidy_memory() -> None:
    """Collect cyclic garbage and hand the C heap's free pages back to the system
    (glibc's `malloc_trim`; on other C libraries only the collection).

    Why: Streamlit collects garbage after every script run of every session
    (`runner.postScriptGC`), a full pass over every object of a process that holds the
    demo model, torch, pandas and plotly; under load that was the largest single cost of
    a page (benchmarks/RESULTS.md, "Load"). The repository's config turns it off; this
    pass, on a clock instead of per run, is what still returns the memory of ended
    sessions once the server is quiet."""
    gc.collect()
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)


def tidy_memory_every(seconds: float = TIDY_EVERY_S) -> threading.Event:
    """Run `tidy_memory` every `seconds` on a daemon thread; setting the returned event
    stops it."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(seconds):
            tidy_memory()

    threading.Thread(target=run, name="normcore-tidy-memory", daemon=True).start()
    return stop


def arrow_on_malloc() -> None:
    """Make pyarrow allocate with the C library's malloc instead of its bundled mimalloc.

    Why: pandas keeps text columns, as in every uploaded table, in Arrow arrays; memory
    that mimalloc gets back stays with it, out of reach of `tidy_memory`'s trim.
    Read by pyarrow when it is first imported, so this runs before anything imports it."""
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


def main(argv: list[str] | None = None) -> None:
    """Cap malloc's arenas, stop the address lookup, prepare the demo, keep what it made
    out of the garbage collector's passes, tidy memory on a clock, then `streamlit run
    app.py` with `argv`'s options."""
    from streamlit.web import cli

    few_malloc_arenas()
    arrow_on_malloc()
    no_address_lookup()
    warm()
    # What exists now lives as long as the server: no collection needs to walk it again.
    gc.freeze()
    tidy_memory_every()
    options = sys.argv[1:] if argv is None else argv
    cli.main(["run", str(APP), *options], prog_name="streamlit")


if __name__ == "__main__":
    main()
