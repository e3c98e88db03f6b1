"""`python serve.py [streamlit options]`: the dashboard, heavy imports done first.

`streamlit run app.py` imports what the pages need when the first browser session runs
the script, so the first visitor would wait for the numerical stack to load and for the
demo's first chart to be computed (benchmarks/RESULTS.md, "Dashboard"). This runs the
same Streamlit command in a process that has imported it already (the script then finds
it in `sys.modules`) and, as soon as Streamlit's runtime exists, computes the first
page's demo results into the caches every session reads (`pages.common.warm_first_page`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"


def warm_when_ready() -> None:
    """Wait for Streamlit's runtime (its caches live there), then warm the first page.

    A failure here is only logged: the page computes the same thing and reports it."""
    from streamlit import runtime

    while not runtime.exists():
        time.sleep(0.05)
    try:
        from pages.common import warm_first_page

        warm_first_page()
    except Exception as err:  # noqa: BLE001  (the page will say what went wrong)
        logging.getLogger("normcore").warning("warming the first page failed: %s", err)


def main(argv: list[str] | None = None) -> None:
    """Import the numerical stack, start `warm_when_ready`, then `streamlit run app.py`
    with `argv`'s options."""
    import plotly.graph_objects  # noqa: F401
    from streamlit.web import cli

    import normcore.explore  # noqa: F401
    import normcore.model  # noqa: F401

    options = sys.argv[1:] if argv is None else argv
    threading.Thread(target=warm_when_ready, daemon=True, name="normcore-first-page").start()
    cli.main(["run", str(APP), *options], prog_name="streamlit")


if __name__ == "__main__":
    main()
