"""Conditional centiles in the dashboard (issue 17, item 7): the Individual page's profile
beside the same profile given IDPs the user picks, imputed bands of IDPs a person lacks,
the Cohort page scored given IDPs, and the Teach page's joint draws over a pair of fans."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import time

import numpy as np
import pytest
from dashboard_app import DEMO_TRAIN, IDPS, SITES, app, no_exception
from streamlit.testing.v1 import AppTest

from normcore import NormativeModel, Schema, read_table
from normcore.figures.charts import IMPUTED_LABEL
from normcore.synthetic import SyntheticSpec, simulate
from pages.common import TrainingJob

PLAIN = "compared with people of the same age, sex and site"


def text(elements) -> str:
    """The elements' text as the reader sees it (markdown's backslash escapes removed)."""
    shown = "\n".join(str(e.value) for e in elements).replace("\u200b", "")
    return re.sub(r"\\(.)", r"\1", shown)


def values(array) -> np.ndarray:
    """A trace's x, y or base: a list, or Plotly's typed array (base64 bytes of one dtype)."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"])
    return np.asarray([np.nan if v is None else v for v in array], dtype=float)


def traces(at: AppTest, name_part: str) -> list[dict]:
    """The traces of the one chart on the page that has a trace named with `name_part`."""
    found = [json.loads(c.proto.spec)["data"] for c in at.get("plotly_chart")]
    (data,) = [d for d in found if any(name_part in str(t.get("name")) for t in d)]
    return data


def profile_bars(at: AppTest) -> dict[str, dict]:
    """The Individual page's profile traces by name: plain, given and imputed."""
    kinds = {PLAIN: "plain", "... and the same": "given", f"{IMPUTED_LABEL}: its band": "imputed"}
    return {
        kind: t
        for t in traces(at, PLAIN)
        for start, kind in kinds.items()
        if str(t.get("name")).startswith(start)
    }


def test_individual_profile_given_etiv_differs_from_the_plain_profile():
    at = app("pages/individual.py")
    no_exception(at)
    assert at.multiselect(key="ind_given").value == ["eTIV"]
    bars = profile_bars(at)
    assert bars["given"]["name"] == "... and the same eTIV"
    labels = bars["plain"]["y"][1]
    plain, given = values(bars["plain"]["x"]), values(bars["given"]["x"])
    assert len(plain) == len(given) == len(IDPS)
    at_etiv = labels.index("eTIV (given)")
    assert np.isnan(given[at_etiv])  # the given IDP is not scored given itself
    others = np.delete(np.arange(len(IDPS)), at_etiv)
    assert np.all(np.isfinite(given[others]))
    assert np.abs(given[others] - plain[others]).max() > 0.05
    # none picked: only the plain profile
    at.multiselect(key="ind_given").set_value([]).run()
    no_exception(at)
    assert set(profile_bars(at)) == {"plain"}


def test_a_blank_cell_shows_its_imputed_band_in_the_profile(tiny_demo):
    _, test = tiny_demo
    table = test.assign(sex=test["sex"].map({0: "F", 1: "M"}))
    table.loc[0, "Left-Hippocampus"] = np.nan
    at = app("pages/data.py")
    at.file_uploader(key="data_upload").set_value(
        ("blank.csv", table.to_csv(index=False).encode(), "text/csv")
    )
    at.run()
    at.switch_page("pages/individual.py").run()
    no_exception(at)
    assert at.selectbox(key="ind_person").value == 0
    assert "blank cells" in text(at.warning)
    bars = profile_bars(at)
    labels = bars["plain"]["y"][1]
    row = labels.index(f"Left-Hippocampus · {IMPUTED_LABEL}")
    assert np.isnan(values(bars["plain"]["x"])[row])
    lo, width = values(bars["imputed"]["base"])[row], values(bars["imputed"]["x"])[row]
    assert np.isfinite(lo) and width > 0
    assert np.isnan(np.delete(values(bars["imputed"]["x"]), row)).all()
    assert IMPUTED_LABEL in text(at.caption)


@pytest.fixture(scope="module")
def unmasked_model() -> NormativeModel:
    """A tiny model trained without conditioning masks, as models saved before conditional
    scoring were: it scores complete tables and refuses `given`."""
    train = read_table(DEMO_TRAIN)
    train = train[train["site"].isin(SITES)].reset_index(drop=True)
    model = NormativeModel(
        max_epochs=2, reference_samples=200, grid_points=11, threads=1,
        network={"width": 32, "depth": 1},
    )  # fmt: skip
    model.config = dataclasses.replace(model.config, conditional=False)
    return model.fit(train, Schema.infer(train, idps=IDPS))


def test_a_model_without_masks_says_so_and_shows_only_the_plain_profile(unmasked_model):
    at = app(
        "pages/individual.py",
        models={"trained": (unmasked_model, "trained:unmasked", "Trained this session")},
        model_choice="trained",
    )
    no_exception(at)
    assert not at.error
    assert "trained before conditional scoring" in text(at.info)
    assert set(profile_bars(at)) == {"plain"}


def test_cohort_scored_given_etiv_names_it_in_every_row(tiny_demo):
    model, test = tiny_demo
    at = app("pages/cohort.py")
    no_exception(at)
    plain = at.dataframe[0].value
    assert (plain["given"] == "").all()
    at.multiselect(key="cohort_given").set_value(["eTIV"]).run()
    no_exception(at)
    assert not at.warning
    assert "about a minute per 1,000 people" in text(at.caption)
    shown = at.dataframe[0].value
    assert (shown["given"] == "eTIV").all() and "eTIV" not in set(shown["idp"])
    merged = shown.merge(plain, on=["row", "idp"], suffixes=("", "_plain"))
    assert len(merged) == len(shown)
    assert (merged["z"] - merged["z_plain"]).abs().max() > 0.05
    assert set(shown["row"]) == set(range(len(test)))


def test_teach_shows_joint_draws_over_a_pair_of_fans():
    spec = SyntheticSpec(n_idps=3, n_sites=2)
    df = simulate(spec, 400, seed=1)
    settings = dict(
        max_epochs=20, reference_samples=300, grid_points=11, threads=1,
        network={"width": 32, "depth": 1},
    )  # fmt: skip
    job = TrainingJob(df, Schema.infer(df), settings)
    job.model = NormativeModel(**settings).fit(df, job.schema)
    job.finished = time.monotonic()
    at = app("pages/teach.py", teach_job=(job, spec))
    no_exception(at)
    assert not at.error
    at.selectbox(key="teach_pair_y").set_value("idp_002").run()
    no_exception(at)
    data = traces(at, "joint draws")
    draws = [t for t in data if t.get("name") == "joint draws"]
    assert len(draws) == 3
    fan_a, fan_b, pair = draws
    assert np.allclose(values(pair["x"]), values(fan_a["y"]))
    assert np.allclose(values(pair["y"]), values(fan_b["y"]))
    assert len(values(pair["x"])) == 400
    caption = text(at.caption)
    assert "Within the 2nd-98th centile band" in caption and "idp_002" in caption
