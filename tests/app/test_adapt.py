"""Adapting the active model to a new site on the Model page, and unseen sites elsewhere."""

from __future__ import annotations

import re
import time

import pandas as pd
from dashboard_app import IDPS, app
from streamlit.testing.v1 import AppTest


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def plain(value: str) -> str:
    """Markdown source as the reader sees it: the pages escape user text with backslashes."""
    return re.sub(r"\\(.)", r"\1", value.replace("\u200b", ""))


def text(elements) -> str:
    return plain("\n".join(e.value for e in elements))


def clinic(test: pd.DataFrame, n: int, site: str = "CLINIC") -> pd.DataFrame:
    """`n` held-out people (both sexes) relabelled as scanned at a site the model lacks."""
    people = test[test["site"] == "Beijing_Zang"].groupby("sex").head(n // 2 + n % 2).head(n)
    return people.assign(site=site).reset_index(drop=True)


def say_sex_codes(at: AppTest, prefix: str, codes=("0", "1")) -> AppTest:
    """Tell the mapper what the sex codes mean, as a user must (nothing is guessed)."""
    for code in codes:
        if any(s.key == f"{prefix}_sexcode_{code}" for s in at.selectbox):
            at.selectbox(key=f"{prefix}_sexcode_{code}").set_value(code)
    return at.run()


def controls_uploaded(df: pd.DataFrame) -> AppTest:
    at = app("pages/model.py")
    data = df.to_csv(index=False).encode()
    at.file_uploader(key="adapt_upload").set_value(("controls.csv", data, "text/csv"))
    return say_sex_codes(at.run(), "adapt_map")


def test_adapting_to_a_new_site_activates_it_and_offers_the_bundle(tiny_demo):
    _, test = tiny_demo
    at = controls_uploaded(clinic(test, 24))
    no_exception(at)
    assert not at.error, text(at.error)
    assert "24 controls" in text(at.markdown) and "CLINIC" in text(at.markdown)
    assert not at.warning  # enough controls; their new site is expected, not flagged
    counts = next(d.value for d in at.dataframe if list(d.value.columns) == ["sex", "controls"])
    assert counts["controls"].tolist() == [12, 12]
    at.number_input(key="adapt_steps").set_value(10)
    at.button(key="adapt_start").click().run()
    no_exception(at)
    deadline = time.monotonic() + 90
    while "adapted" not in at.session_state["models"]:
        assert time.monotonic() < deadline, "adaptation did not finish in time"
        time.sleep(0.5)
        at.run()
        no_exception(at)
        assert not at.error, text(at.error)
    assert at.session_state["model_choice"] == "adapted"
    adapted = at.session_state["models"]["adapted"][0]
    assert adapted.adaptations_[-1]["level"] == "CLINIC"
    assert any("Adapted to site **CLINIC**" in s.value for s in at.success)
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download the adapted model (.normcore bundle)" in labels

    # the sidebar (drawn by app.py) names the adapted site
    again = app(models=at.session_state["models"], model_choice="adapted")
    no_exception(again)
    assert again.sidebar.radio(key="model_radio").value == "adapted"
    assert "adapted sites: CLINIC (24 controls)" in text(again.sidebar.markdown)
    # picking another model in the sidebar switches back (AppTest draws the sidebar of an
    # st.navigation app on the first run only, so check the state)
    again.sidebar.radio(key="model_radio").set_value("demo").run()
    assert again.session_state["model_choice"] == "demo"
    again.session_state["model_choice"] = "adapted"

    # people from that site are no longer scored as an unknown site
    again.switch_page("pages/data.py").run()
    people = clinic(test, 30).to_csv(index=False).encode()
    again.file_uploader(key="data_upload").set_value(("clinic.csv", people, "text/csv")).run()
    say_sex_codes(again, "map")
    again.switch_page("pages/cohort.py").run()
    no_exception(again)
    assert not any("has not seen" in w.value for w in again.warning)


def test_too_few_controls_warn_in_plain_words(tiny_demo):
    _, test = tiny_demo
    at = controls_uploaded(clinic(test, 6))
    no_exception(at)
    warning = next(plain(w.value) for w in at.warning if "Few controls" in w.value)
    assert "fewer than 10 healthy controls per sex" in warning
    assert "adapted from only 3 controls with sex = 0" in warning
    assert not at.button(key="adapt_start").disabled

    at = controls_uploaded(clinic(test, 2))
    assert "At least 3 controls" in text(at.error)
    assert at.button(key="adapt_start").disabled


def test_controls_with_a_missing_column_name_it(tiny_demo):
    _, test = tiny_demo
    at = controls_uploaded(clinic(test, 24).drop(columns=IDPS[0]))
    no_exception(at)
    errors = text(at.error)
    assert "cannot be used yet" in errors and IDPS[0] in errors
    assert not at.get("button") or all(b.key != "adapt_start" for b in at.button)


def test_controls_without_a_site_column_are_named_by_the_user(tiny_demo):
    _, test = tiny_demo
    at = controls_uploaded(clinic(test, 24).drop(columns="site"))
    no_exception(at)
    assert any("name the site" in i.value.lower() for i in at.info)
    at.text_input(key="adapt_site_name").input("MyClinic").run()
    no_exception(at)
    assert at.button(key="adapt_start").label == "Adapt to site MyClinic"


def test_cohort_and_individual_say_an_unseen_site_was_scored_as_unknown(tiny_demo):
    _, test = tiny_demo
    at = app("pages/data.py")
    people = clinic(test, 8, site="NEWSITE").to_csv(index=False).encode()
    at.file_uploader(key="data_upload").set_value(("new.csv", people, "text/csv")).run()
    say_sex_codes(at, "map")
    at.switch_page("pages/cohort.py").run()
    no_exception(at)
    warning = next(plain(w.value) for w in at.warning if "has not seen" in w.value)
    assert "8 people" in warning and "'NEWSITE' (8)" in warning
    assert "'unknown site' level" in warning and "Adapt to my site" in warning
    at.switch_page("pages/individual.py").run()
    no_exception(at)
    warning = next(plain(w.value) for w in at.warning if "has not seen" in w.value)
    assert "1 person has" in warning and "Adapt to my site" in warning
