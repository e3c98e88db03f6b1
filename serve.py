"""`python serve.py [streamlit options]`: the dashboard, heavy imports done first.

`streamlit run app.py` imports what the pages need when the first browser session runs
the script, so the first visitor would wait for the numerical stack to load (a third of
the time to a first chart on a 2-core CPU: benchmarks/RESULTS.md, "Dashboard"). This
runs the same Streamlit command in a process that has imported it already; the script
then finds it in `sys.modules`.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"


def main(argv: list[str] | None = None) -> None:
    """Import the numerical stack, then `streamlit run app.py` with `argv`'s options."""
    import plotly.graph_objects  # noqa: F401
    from streamlit.web import cli

    import normcore.explore  # noqa: F401
    import normcore.model  # noqa: F401

    options = sys.argv[1:] if argv is None else argv
    cli.main(["run", str(APP), *options], prog_name="streamlit")


if __name__ == "__main__":
    main()
