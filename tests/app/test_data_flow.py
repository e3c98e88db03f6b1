"""Upload, column mapping, scoring, individual profile and training under AppTest."""

from __future__ import annotations

import re
import time

import pandas as pd
from dashboard_app import app, no_exception
from streamlit.testing.v1 import AppTest

from normcore import bundle


def plain(elements) -> str:
    """The elements' text as the reader sees it: the pages escape user text in markdown."""
    shown = "\n".join(e.value for e in elements).replace("\u200b", "")
    return re.sub(r"\\(.)", r"\1", shown)


def csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def uploaded(df_or_bytes, name: str = "cohort.csv") -> AppTest:
    at = app("pages/data.py")
    data = df_or_bytes if isinstance(df_or_bytes, bytes) else csv_bytes(df_or_bytes)
    at.file_uploader(key="data_upload").set_value((name, data, "text/csv"))
    return at.run()


def renamed_cohort(tiny_demo) -> pd.DataFrame:
    """The held-out people with other column names and F/M sex coding, as a clinic sends."""
    _, test = tiny_demo
    out = test.rename(
        columns={
            "sub_id": "participant",
            "age": "Age",
            "sex": "gender",
            "site": "scanner",
            "Left-Hippocampus": "hippo_left",
        }
    )
    out["gender"] = out["gender"].map({0: "F", 1: "M"})
    return out


def test_bad_upload_says_why_without_traceback():
    at = uploaded(b"\x00\x01\x02 not a table", name="scan.csv")
    no_exception(at)
    assert at.error and "could not be read" in at.error[0].value


def test_unmapped_idp_column_is_named(tiny_demo):
    at = uploaded(renamed_cohort(tiny_demo))
    no_exception(at)
    text = plain(at.error)
    assert "Left-Hippocampus" in text and "Map them" in text
    # the other pages say the same instead of failing
    at.switch_page("pages/cohort.py").run()
    no_exception(at)
    assert "Left-Hippocampus" in plain(at.error)


def test_mapping_then_scoring_gives_the_cli_table(tiny_demo):
    model, test = tiny_demo
    at = uploaded(renamed_cohort(tiny_demo))
    assert at.selectbox(key="map_id").value == "participant"
    assert at.selectbox(key="map_age").value == "Age"
    assert at.selectbox(key="map_sex").value == "gender"
    assert at.selectbox(key="map_sexcode_F").value == "0"
    assert at.selectbox(key="map_sexcode_M").value == "1"
    at.session_state["mapping"].idps["Left-Hippocampus"] = "hippo_left"
    at.run()
    no_exception(at)
    assert not at.error
    assert any("Ready to score" in s.value for s in at.success)
    at.switch_page("pages/cohort.py").run()
    no_exception(at)
    assert at.get("download_button")[0].proto.label.startswith("Download scores")
    shown = at.dataframe[0].value
    expected = model.score(test)
    assert list(shown.columns) == list(expected.columns)
    assert set(shown["sub_id"]) == set(test["sub_id"].astype(str))
    merged = shown.merge(expected, on=["sub_id", "idp"], suffixes=("", "_cli"))
    assert len(merged) == len(shown)
    assert (merged["z"] - merged["z_cli"]).abs().max() < 1e-9


def test_individual_from_cohort_and_typed_in():
    at = app("pages/individual.py")
    no_exception(at)
    assert at.metric[0].label == "Multivariate deviation centile"
    at.radio(key="ind_mode").set_value("Type values").run()
    no_exception(at)
    assert len(at.get("plotly_chart")) >= 2


def test_bad_bundle_upload_is_refused():
    at = app("pages/model.py")
    at.file_uploader(key="bundle_upload").set_value(
        ("x.normcore", b"garbage", "application/octet-stream")
    )
    at.run()
    no_exception(at)
    assert "not a usable normcore model" in at.error[0].value


def test_bundle_whose_weights_do_not_fit_its_settings_is_refused_at_upload(tiny_demo):
    """Such a file passes its checksum (recomputed after the edit) and reads without its
    network; the upload builds the network, so it is refused there, not by a traceback on
    the first page that draws."""
    model, _ = tiny_demo
    tensors, meta = bundle.from_bytes(model.to_bytes())
    meta["config"]["network"]["width"] *= 2
    at = app("pages/model.py")
    at.file_uploader(key="bundle_upload").set_value(
        ("wider.normcore", bundle.to_bytes(tensors, meta), "application/octet-stream")
    )
    at.run()
    no_exception(at)
    assert "not a usable normcore model" in at.error[0].value
    assert "weights do not match its settings" in at.error[0].value
    assert at.session_state["model_choice"] != "uploaded"


def test_bundle_round_trip_becomes_active(tiny_demo):
    model, _ = tiny_demo
    at = app("pages/model.py")
    at.file_uploader(key="bundle_upload").set_value(
        ("mine.normcore", model.to_bytes(), "application/octet-stream")
    )
    at.run()
    no_exception(at)
    # (a switched-to page runs without app.py's sidebar under AppTest: check the state)
    assert at.session_state["model_choice"] == "uploaded"
    assert "mine.normcore" in at.subheader[0].value


def test_training_in_the_background_activates_the_new_model(tiny_demo):
    _, test = tiny_demo
    at = uploaded(test)
    at.switch_page("pages/model.py").run()
    at.number_input(key="train_epochs").set_value(5)
    at.number_input(key="train_reference").set_value(300)
    at.number_input(key="train_steps").set_value(10)
    at.selectbox(key="train_width").set_value(64)
    at.selectbox(key="train_depth").set_value(2)
    at.checkbox(key="train_prior").check()
    at.button(key="train_start").click().run()
    no_exception(at)
    deadline = time.monotonic() + 120
    while "trained" not in at.session_state["models"]:
        assert time.monotonic() < deadline, "training did not finish in time"
        time.sleep(1.0)
        at.run()
        no_exception(at)
        assert not at.error, at.error[0].value
    assert at.session_state["model_choice"] == "trained"
    assert at.session_state["models"]["trained"][0].config.gaussian_prior
    at.run()
    assert any("Training finished" in s.value for s in at.success)


def test_the_centile_table_phase_shows_its_progress_and_time_left(tiny_demo):
    """After the network trains, building the centile table says how far it is and how
    long it still needs, at the pace of the table phase itself (not of the epochs)."""
    from pages.common import TrainingJob

    model, test = tiny_demo
    job = TrainingJob(test, model.schema, {})
    job._progress({"phase": "train", "epoch": 3, "max_epochs": 5, "fraction": 0.6})
    job._progress({"phase": "reference", "fraction": 0.25})
    job.phase_started -= 300.0  # a quarter of the table took five minutes
    at = app("pages/model.py", train_job=job)
    no_exception(at)
    (bar,) = at.get("progress")
    found = re.search(r"centile table from model samples: 25%, about (\d+) s left", bar.proto.text)
    assert found, bar.proto.text
    assert 900 <= int(found.group(1)) < 960  # 300 s x 3 more quarters, plus the test's own
