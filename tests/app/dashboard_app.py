"""AppTest helpers: the tiny demo model's data and a way to open the dashboard.

NORMCORE_DEMO_DIR points the dashboard at a temporary directory holding a small model
trained on a slice of fcon1000 (12 IDPs, few epochs) and its held-out people, so the tests
never depend on the size or presence of the real demo bundle.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app.py"
FCON = REPO.parent / "shared" / "data" / "fcon1000.csv"
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
    "CSF",
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
