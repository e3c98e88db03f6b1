"""Every dashboard page runs under AppTest on the tiny demo model, error paths included."""

from __future__ import annotations

import pytest
from dashboard_app import IDPS, app
from streamlit.testing.v1 import AppTest


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def errors(at: AppTest) -> str:
    return "\n".join(e.value for e in at.error)


def test_app_opens_on_centile_fans_with_demo_model():
    at = app()
    no_exception(at)
    assert at.title[0].value == "normcore"
    assert at.header[0].value == "Centile fans"
    assert len(at.get("plotly_chart")) == 1
    assert at.sidebar.radio(key="model_radio").value == "demo"
    assert any("Biswal" in c.value for c in at.caption)


@pytest.mark.parametrize(
    "page, header",
    [
        ("pages/dependence.py", "Dependence"),
        ("pages/individual.py", "Individual"),
        ("pages/cohort.py", "Cohort"),
        ("pages/data.py", "Data"),
        ("pages/model.py", "Model"),
        ("pages/teach.py", "Teach: centiles on data whose truth we know"),
        ("pages/diagnostics.py", "Diagnostics"),
    ],
)
def test_every_page_runs_on_the_demo(page, header):
    at = app(page)
    no_exception(at)
    assert at.header[0].value == header
    assert not at.error


def test_fan_controls_change_the_chart():
    at = app()
    at.multiselect(key="fan_idps").set_value(IDPS[:3]).run()
    at.selectbox(key="fan_sex").set_value("1").run()
    at.toggle(key="fan_points").set_value(False).run()
    no_exception(at)
    assert len(at.get("plotly_chart")) == 1


def test_fans_without_any_measure_ask_for_one():
    at = app()
    at.multiselect(key="fan_idps").set_value([]).run()
    no_exception(at)
    assert any("at least one" in i.value for i in at.info)


def test_no_model_at_all_explains_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMCORE_DEMO_DIR", str(tmp_path))
    at = app()
    no_exception(at)
    assert "make demo" in at.info[0].value


def test_unreadable_demo_bundle_is_explained_not_raised(monkeypatch, tmp_path):
    (tmp_path / "fcon1000.normcore").write_bytes(b"not a bundle")
    monkeypatch.setenv("NORMCORE_DEMO_DIR", str(tmp_path))
    at = app()
    no_exception(at)
    assert "cannot be loaded" in at.sidebar.error[0].value
    assert "make demo" in at.info[0].value
