"""AppTest helpers: the tiny demo model's data and a way to open the dashboard.

NORMCORE_DEMO_DIR points the dashboard at a temporary directory holding a small model
trained on a slice of the bundled fcon1000 demo halves (four sites, 12 IDPs, few epochs)
and its held-out people, so the tests never depend on the size of the real demo bundle.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app.py"
DEMO_TRAIN = REPO / "assets" / "demo" / "fcon1000_train.csv"
DEMO_TEST = REPO / "assets" / "demo" / "fcon1000_test.csv"
"""The repository's site-stratified 50/50 split of the public fcon1000 table (see
normcore/demo.py for how it was made, README for its origin and licence)."""
IDPS = [
    "Left-Hippocampus",
    "Right-Hippocampus",
    "lh_MeanThickness_thickness",
    "rh_MeanThickness_thickness",
    "eTIV",
    "TotalGrayVol",
    "Left-Lateral-Ventricle",
    "Left-Thalamus-Proper",
    "lh_G_front_sup_thickness",
    "rh_G_front_sup_thickness",
    "3rd-Ventricle",
    "Left-Amygdala",
]
SITES = ["Beijing_Zang", "Cambridge_Buckner", "ICBM", "Oulu"]

#: The tiny demo's directory: set before any page module reads NORMCORE_DEMO_DIR.
DEMO_DIR = Path(tempfile.mkdtemp(prefix="normcore-apptest-demo-"))
os.environ["NORMCORE_DEMO_DIR"] = str(DEMO_DIR)


def app(page: str | None = None, **state) -> AppTest:
    """An AppTest of the dashboard, switched to `page` (a path under pages/) if given."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    if page is not None:
        at.switch_page(page)
        at.run()
    return at


def no_exception(at: AppTest) -> None:
    """The script ran to the end: no exception was shown on the page."""
    assert not at.exception, [e.value for e in at.exception]

