"""The app script runs headless under Streamlit's AppTest without raising."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

# AppTest resolves a relative path against the calling file, so give it the real one.
APP = Path(__file__).resolve().parents[2] / "app.py"


def test_app_runs_without_exception():
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
