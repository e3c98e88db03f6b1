"""What a clinician must not be told quietly: sex codes guessed, flattering diagnostics,
user text rendered as markdown, a lost upload replaced by the demo, QC columns offered as
brain measures, another atlas mistaken for the model's (issues 18 and 20)."""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from dashboard_app import IDPS, REPO, app, no_exception
from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
from streamlit.runtime.uploaded_file_manager import UploadedFileRec
from streamlit.testing.v1 import AppTest

EVIL_SITE = "![x](http://evil.example/t.png)"
EVIL_ID = "[click](http://evil.example/)"
FREESURFER = REPO / "tests" / "data" / "freesurfer" / "subjects"


def text(elements) -> str:
    """The elements' text as the reader sees it (markdown's backslash escapes removed)."""
    shown = "\n".join(str(e.value) for e in elements).replace("\u200b", "")
    return re.sub(r"\\(.)", r"\1", shown)


def upload(at: AppTest, df: pd.DataFrame, name: str = "cohort.csv") -> AppTest:
    data = df.to_csv(index=False).encode()
    at.file_uploader(key="data_upload").set_value((name, data, "text/csv"))
    return at.run()


def test_sex_coded_1_2_is_asked_with_counts_never_guessed(tiny_demo):
    _, test = tiny_demo
    table = test.assign(sex=test["sex"].map({0: 2, 1: 1}))
    n_male, n_female = int((table["sex"] == 1).sum()), int((table["sex"] == 2).sum())
    at = upload(app("pages/data.py"), table)
    no_exception(at)
    assert at.selectbox(key="map_sexcode_1").value is None
    assert at.selectbox(key="map_sexcode_2").value is None
    assert f"1: {n_male} people, 2: {n_female} people" in text(at.markdown)
    assert not any("Ready to score" in s.value for s in at.success)
    assert "say which sex each code means" in text(at.error)

    at.button(key="map_sex_usual").click().run()
    no_exception(at)
    assert at.selectbox(key="map_sexcode_1").value == "1"  # the demo's male level
    assert at.selectbox(key="map_sexcode_2").value == "0"  # the demo's female level
    assert any(f"Ready to score {len(table)} people" in s.value for s in at.success)


def test_sex_words_map_to_levels_of_known_meaning_without_asking(tiny_demo):
    _, test = tiny_demo
    at = upload(app("pages/data.py"), test.assign(sex=test["sex"].map({0: "F", 1: "M"})))
    no_exception(at)
    assert at.selectbox(key="map_sexcode_F").value == "0"
    assert at.selectbox(key="map_sexcode_M").value == "1"
    assert any("Ready to score" in s.value for s in at.success)


def test_site_codes_are_shown_with_counts_and_new_ones_named(tiny_demo):
    _, test = tiny_demo
    table = test.assign(site=test["site"].replace({"Oulu": "NEWSCANNER"}))
    at = upload(app("pages/data.py"), table)
    no_exception(at)
    n_new = int((table["site"] == "NEWSCANNER").sum())
    markdown = text(at.markdown)
    assert f"NEWSCANNER: {n_new} people" in markdown
    assert "New to the model" in markdown and "NEWSCANNER" in markdown.split("New to the model")[1]


def evil_table(test: pd.DataFrame) -> pd.DataFrame:
    table = test.head(12).copy()
    table.loc[:5, "site"] = EVIL_SITE
    table.loc[0, "sub_id"] = EVIL_ID
    return table


def rendered_markdown(at: AppTest) -> list[str]:
    """Every element whose text Streamlit renders as markdown, sidebar included."""
    kinds = ("markdown", "caption", "warning", "error", "info", "success", "subheader")
    return [str(e.value) for kind in kinds for e in at.get(kind)] + [
        str(e.value) for e in at.sidebar.get("markdown")
    ]


@pytest.mark.parametrize("page", ["pages/data.py", "pages/cohort.py", "pages/individual.py"])
def test_user_text_is_rendered_as_text_not_markdown(tiny_demo, page):
    _, test = tiny_demo
    at = upload(app("pages/data.py"), evil_table(test), name="[t](http://evil.example).csv")
    for v in ("0", "1"):
        at.selectbox(key=f"map_sexcode_{v}").set_value(v)
    at.run()
    if page != "pages/data.py":
        at.switch_page(page).run()
    no_exception(at)
    shown = rendered_markdown(at)
    assert any("evil" in s for s in shown), shown  # the values are shown ...
    for s in shown:  # ... but never as an image or a link
        assert "![x](" not in s and "](http://evil" not in s, s
    # escaped, and the autolink broken by a zero-width space after "http"
    assert any("\\!\\[x\\]\\(http\u200b\\:\\/\\/evil\\.example\\/t\\.png\\)" in s for s in shown)


def test_an_abandoned_upload_is_said_and_never_replaced_by_the_demo(monkeypatch):
    """A file that reached the session's upload store but no uploader (the user left the
    page before it was read) is named on the Data, Cohort and Diagnostics pages, and the
    Cohort page scores nobody instead of the demo's people."""
    original = MemoryUploadedFileManager.__init__

    def with_a_lost_file(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.file_storage["test session id"]["lost-1"] = UploadedFileRec(
            "lost-1", "patients.csv", "text/csv", b"age,sex\n30,1\n"
        )

    monkeypatch.setattr(MemoryUploadedFileManager, "__init__", with_a_lost_file)
    at = app("pages/cohort.py")
    no_exception(at)
    assert "patients.csv" in text(at.warning) and "upload it again" in text(at.warning).lower()
    assert not at.dataframe and not at.get("plotly_chart")
    assert not any("demo" in s.value.lower() for s in at.info)
    at.switch_page("pages/data.py").run()
    assert "patients.csv" in text(at.warning) and "not finished" in text(at.warning)


def test_the_demo_cohort_is_named_as_the_demo():
    at = app("pages/cohort.py")
    no_exception(at)
    assert any("Showing the demo" in i.value for i in at.info)


def training_table(test: pd.DataFrame) -> pd.DataFrame:
    """A reference table with columns a training form must not offer as brain measures."""
    table = test.copy()
    table["lh_EulerNumber"] = -20 - (table.index % 7)
    table["site_code"] = table["site"].astype("category").cat.codes + 1
    table["Left-WM-hypointensities"] = 0.0
    table["participant_id"] = range(1000, 1000 + len(table))
    return table


def test_training_form_offers_brain_measures_only_and_asks_for_one(tiny_demo):
    _, test = tiny_demo
    at = upload(app("pages/data.py"), training_table(test).drop(columns="sub_id"))
    at.switch_page("pages/model.py").run()
    no_exception(at)
    offered = at.multiselect(key="train_idps").value
    assert set(offered) == set(IDPS)
    notes = text(at.markdown)
    assert "lh_EulerNumber: a FreeSurfer quality-control column" in notes
    assert "site_code: an id or site code" in notes
    assert "Left-WM-hypointensities: the same value (0) in every row" in notes
    at.multiselect(key="train_idps").set_value([]).run()
    no_exception(at)
    assert "Choose at least one IDP" in text(at.warning)
    assert "no numeric column" not in text(at.error)
    assert at.button(key="train_start").disabled


def test_trained_model_keeps_the_selection_and_is_judged_on_held_out_people(tiny_demo):
    _, test = tiny_demo
    at = upload(app("pages/data.py"), test)
    for v in ("0", "1"):
        at.selectbox(key=f"map_sexcode_{v}").set_value(v)
    at.run()
    at.switch_page("pages/model.py").run()
    chosen = IDPS[:5]
    at.multiselect(key="train_idps").set_value(chosen).run()
    at.number_input(key="train_epochs").set_value(5)
    at.number_input(key="train_reference").set_value(300)
    at.number_input(key="train_steps").set_value(10)
    at.selectbox(key="train_width").set_value(64)
    at.selectbox(key="train_depth").set_value(2)
    at.button(key="train_start").click().run()
    deadline = time.monotonic() + 180
    while "trained" not in at.session_state["models"]:
        assert time.monotonic() < deadline, "training did not finish in time"
        time.sleep(1.0)
        at.run()
        no_exception(at)
    at.run()
    no_exception(at)
    assert at.multiselect(key="train_idps").value == chosen
    traces = [t for chart in at.get("plotly_chart") for t in json.loads(chart.proto.spec)["data"]]
    assert any("weights kept" in t.get("name", "") for t in traces)

    at.switch_page("pages/diagnostics.py").run()
    no_exception(at)
    n = len(test)
    held = len(at.session_state["held_out"][at.session_state["models"]["trained"][1]].rows)
    assert 0 < held < n
    said = text(at.markdown)
    assert f"the {held} held-out people" in said and f"of {n}" in said
    assert f"the {n - held} others trained the model" in said
    at.toggle(key="diag_include_training").set_value(True).run()
    no_exception(at)
    assert f"all {n} people" in text(at.markdown) and "flatter" in text(at.markdown)


def freesurfer_zip(parcellations: tuple[str, ...]) -> bytes:
    """Subjects' stats folders zipped as a clinic sends them, with only these files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(FREESURFER.rglob("*.stats")):
            if path.name in parcellations:
                archive.write(path, Path("subjects") / path.relative_to(FREESURFER))
    return buffer.getvalue()


def test_freesurfer_zip_with_covariates_says_the_atlas_differs(tiny_demo):
    """The tiny demo uses Destrieux thickness; stats folders with Desikan-Killiany aparc
    files only are joined with their covariates, and the page says the atlases differ."""
    data = freesurfer_zip(("aseg.stats", "lh.aparc.stats", "rh.aparc.stats"))
    at = app("pages/data.py")
    at.file_uploader(key="data_upload").set_value(("subjects.zip", data, "application/zip"))
    at.run()
    no_exception(at)
    assert any("no age, sex or site" in m.value for m in at.markdown)
    covariates = pd.DataFrame(
        {"participant_id": ["subj01", "subj02", "subj03"], "age": [34.0, 61.5, 47.2],
         "sex": ["F", "M", "F"], "site": ["ICBM", "ICBM", "Oulu"]}
    )
    at.file_uploader(key="covariates_upload").set_value(
        ("covariates.csv", covariates.to_csv(index=False).encode(), "text/csv")
    )
    at.run()
    no_exception(at)
    message = text(at.info)
    assert "Your table is Desikan-Killiany" in message and "this model uses Destrieux" in message
    assert "Left-Thalamus is read as Left-Thalamus-Proper" in message
    assert at.session_state["table"]["age"].tolist() == [34.0, 61.5, 47.2]


THALAMUS = "Left-Thalamus-Proper"
"""FreeSurfer 7 renamed it Left-Thalamus: a table of that version has it all zero."""


def test_a_zero_thalamus_is_flagged_on_the_data_page_and_in_the_cohort(tiny_demo):
    """Scoring: the Data page and the Cohort page name the all-zero column, and the
    cohort's scores flag every cell of it and give none a centile."""
    _, test = tiny_demo
    assert THALAMUS in IDPS
    table = test.assign(**{THALAMUS: 0.0})
    at = upload(app("pages/data.py"), table)
    for v in ("0", "1"):
        at.selectbox(key=f"map_sexcode_{v}").set_value(v)
    at.run()
    no_exception(at)
    warned = text(at.warning)
    assert THALAMUS in warned and f"0 for all {len(table)} people" in warned

    at.switch_page("pages/cohort.py").run()
    no_exception(at)
    flagged = text(at.markdown)
    assert THALAMUS in flagged and f"0 for all {len(table)} people" in flagged
    at.multiselect(key="cohort_table_idps").set_value([THALAMUS]).run()
    no_exception(at)
    shown = at.dataframe[0].value
    assert len(shown) == len(table) and (shown["idp"] == THALAMUS).all()
    assert shown["implausible"].all() and shown["centile"].isna().all()


def test_adaptation_refuses_an_all_zero_thalamus_naming_the_likely_cause(tiny_demo):
    """Adaptation: controls whose thalamus is all zero are refused on the Model page, with
    the column and the FreeSurfer renaming named, and nothing to start."""
    from test_adapt import clinic, controls_uploaded

    _, test = tiny_demo
    controls = clinic(test, 24).assign(**{THALAMUS: 0.0})
    at = controls_uploaded(controls)
    no_exception(at)
    refused = text(at.error)
    assert THALAMUS in refused and f"0 for all {len(controls)} people" in refused
    assert "FreeSurfer version names differently" in refused
    assert not any(b.key == "adapt_start" and not b.disabled for b in at.button)
