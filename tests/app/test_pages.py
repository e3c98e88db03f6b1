"""Every dashboard page runs under AppTest on the tiny demo model, error paths included."""

from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import pytest
from dashboard_app import IDPS, app, no_exception
from streamlit.testing.v1 import AppTest

from normcore.idp_groups import label


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


def chart(at: AppTest) -> dict:
    """The page's one Plotly chart as the figure JSON the browser receives."""
    (element,) = at.get("plotly_chart")
    return json.loads(element.proto.spec)


def values(array: list | dict) -> np.ndarray:
    """A trace's x or y: a list, or Plotly's typed array (base64 bytes of one dtype)."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"])
    return np.asarray(array, dtype=float)


def medians(figure: dict) -> list[dict]:
    return [t for t in figure["data"] if t.get("name") == "median"]


def test_fan_controls_change_the_chart(tiny_demo):
    model, _ = tiny_demo
    at = app()
    before = chart(at)
    assert before["layout"]["annotations"][0]["text"] == label(IDPS[0])
    assert any(t.get("name") == "people" for t in before["data"])
    female_hippocampus = values(medians(before)[0]["y"])

    at.multiselect(key="fan_idps").set_value(IDPS[:3]).run()
    at.selectbox(key="fan_sex").set_value("1").run()
    at.toggle(key="fan_points").set_value(False).run()
    no_exception(at)
    after = chart(at)
    titles = [a["text"] for a in after["layout"]["annotations"]]
    assert titles == [label(idp) for idp in IDPS[:3]]
    assert not any(t.get("name") == "people" for t in after["data"])

    # each panel's median is the model's median for males at the chosen site
    site = at.selectbox(key="fan_site").value
    lines = medians(after)
    assert len(lines) == 3
    ages = values(lines[0]["x"])
    grid = pd.DataFrame({"age": ages, "sex": "1", "site": site})
    expected = model.centiles(grid, (0.5,))
    for idp, line in zip(IDPS[:3], lines):
        np.testing.assert_array_equal(values(line["x"]), ages)
        want = expected.loc[expected["idp"] == idp, "value"].to_numpy()
        np.testing.assert_allclose(values(line["y"]), want, rtol=1e-9)
    assert not np.allclose(values(lines[0]["y"]), female_hippocampus)


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


def test_the_first_page_warm_up_computes_what_the_first_page_asks_for(monkeypatch):
    """serve.py fills the shared caches with the demo's first page before anyone visits
    (`warm_before_opening`); should the page's defaults drift from the warm-up's, the warm-up
    would compute results nobody reads and the first visitor would wait again."""
    from pages import common

    asked: dict[str, list] = {"centiles": [], "score": []}
    real_centiles, real_score = common.centiles, common.score

    def centiles(model, model_key, grid, *args, **kwargs):
        asked["centiles"].append((model_key, grid.copy(), args, kwargs))
        return real_centiles(model, model_key, grid, *args, **kwargs)

    def score(model, model_key, table, table_key, *args, **kwargs):
        asked["score"].append((model_key, table_key, table.copy()))
        return real_score(model, model_key, table, table_key, *args, **kwargs)

    monkeypatch.setattr(common, "centiles", centiles)
    monkeypatch.setattr(common, "score", score)
    common.warm_before_opening()
    warmed = {name: list(calls) for name, calls in asked.items()}
    for calls in asked.values():
        calls.clear()
    no_exception(app())
    assert len(warmed["centiles"]) == len(warmed["score"]) == 1
    key, grid, args, kwargs = warmed["centiles"][0]
    page_key, page_grid, page_args, page_kwargs = asked["centiles"][0]
    assert (key, args, kwargs) == (page_key, page_args, page_kwargs)
    pd.testing.assert_frame_equal(grid, page_grid)
    key, table_key, table = warmed["score"][0]
    assert (key, table_key) == asked["score"][0][:2]
    pd.testing.assert_frame_equal(table, asked["score"][0][2])
