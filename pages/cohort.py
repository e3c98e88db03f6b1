"""Cohort: score everyone (optionally given some IDPs), sort by centile or z, see extremes per
IDP, download the CLI's CSV."""

import pandas as pd
import streamlit as st

from normcore import DataError, NormativeModel
from normcore.explore import (
    extreme_rates,
    unseen_levels_message,
    unseen_levels_summary,
    z_matrix,
)
from normcore.export import to_csv_bytes
from normcore.figures.charts import cohort_z_heatmap
from normcore.figures.charts import extreme_rates as extreme_chart
from normcore.idp_groups import default_idps, label
from normcore.site_advice import SAFE_CONTROLS_PER_SEX
from pages import common
from pages.common import md

common.run_through_app()

model, key, name = common.require_model()
schema = model.schema

st.header("Cohort")
group, err = common.cohort(model, key)
common.stop_if_abandoned(err)
if err is not None:
    st.error("The uploaded table cannot be scored with the active model yet.")
    common.show_problems(err)
    st.stop()
if group is None:
    st.info("Upload a cohort table on the Data page to score it.")
    st.stop()

report = model.check(group.table)
if report.errors:
    st.error("The table cannot be scored:\n" + common.bullets(report.errors))
    st.stop()
common.say_cohort_source(group)
st.write(f"Scoring **{len(group.table)}** people from the {md(group.source)} with {md(name)}.")
if report.warnings:
    with st.expander(f"{len(report.warnings)} warning(s): flagged in the results"):
        st.markdown(common.bullets(report.warnings))


def _score_given(
    _model: NormativeModel, model_key: str, _table: pd.DataFrame, table_key: str,
    given: tuple[str, ...],
) -> pd.DataFrame:  # fmt: skip
    """The cohort's centiles given `given`: 400 conditional draws per person."""
    return _model.score(_table, given=list(given))


SCORE_GIVEN = common.two_scopes(_score_given, shared_entries=4, own_entries=2)


given = st.multiselect(
    "Score given these IDPs (optional)",
    list(schema.idps),
    key="cohort_given",
    format_func=label,
    help="Every other IDP is scored given these IDPs' values as well as age, sex and site "
    "(`normcore score --given`); the download's `given` column names them.",
)
scores = None
if given:
    st.caption(
        "Conditional scoring draws from the joint model for every person: it can take "
        "about a minute per 1,000 people."
    )
    try:
        with st.spinner(
            f"Scoring {len(group.table)} people given {md(', '.join(given))}: about a "
            "minute per 1,000 people ..."
        ):
            scores = common.cached(SCORE_GIVEN, key, group.key)(
                model, key, group.table, group.key, tuple(given)
            )
    except (DataError, ValueError) as exc:  # a model trained without conditioning masks
        st.warning(md(f"Scored without the given IDPs: {exc}".rstrip(".") + "."))
        given = []
if scores is None:
    try:
        scores = common.score(model, key, group.table, group.key)
    except (DataError, ValueError) as exc:  # blank cells and a model without masks
        common.show_problems(exc)
        st.stop()
unseen = unseen_levels_summary(scores, group.table)
if unseen:
    st.warning(md(unseen_levels_message(unseen, SAFE_CONTROLS_PER_SEX)))


@st.cache_data(show_spinner=False, max_entries=2)
def shared_csv(_scores: pd.DataFrame, model_key: str, table_key: str) -> bytes:
    """The demo's scores as CSV, made once for every session."""
    return to_csv_bytes(_scores)


def _summaries(_scores: pd.DataFrame, model_key: str, table_key: str, id_column: str | None):
    return extreme_rates(_scores), z_matrix(_scores, id_column, max_people=300)


SUMMARIES = common.two_scopes(_summaries, shared_entries=8, own_entries=4)


given_key = f"{group.key}:given:{','.join(given)}"
rates, z = common.cached(SUMMARIES, key, group.key)(scores, key, given_key, schema.id)
st.download_button(
    "Download scores (CSV, same columns as `normcore score`)",
    # Made when clicked, outside the page's run, where only the shared cache can be read.
    data=lambda: (
        shared_csv(scores, key, given_key)
        if common.shared(key, group.key)
        else to_csv_bytes(scores)
    ),
    on_click="ignore",
    file_name="normcore_scores.csv",
    mime="text/csv",
    key="download_scores",
    type="primary",
)

summary_tab, table_tab, heat_tab = st.tabs(["Extremes per IDP", "Table", "z heatmap"])
with summary_tab:
    flagged = rates[(rates["lo"] > 0.05) | (rates["hi"] < 0.05)]
    st.write(
        f"Share of people with |z| > 1.96 per IDP (bars: 95% interval). A calibrated model "
        f"puts about 5% of a healthy cohort there; {len(flagged)} of {len(rates)} IDPs "
        "differ from 5% beyond chance (red)."
    )
    st.plotly_chart(extreme_chart(rates), width="stretch", key="cohort_extremes")
with table_tab:
    idps_shown = st.multiselect(
        "IDPs",
        list(schema.idps),
        default=default_idps(schema.idps, 6),
        format_func=label,
        key="cohort_table_idps",
    )
    view = scores[scores["idp"].isin(idps_shown)] if idps_shown else scores
    st.dataframe(
        view,
        hide_index=True,
        width="stretch",
        height=420,
        column_config={
            "centile": st.column_config.NumberColumn(format="%.1f"),
            "z": st.column_config.NumberColumn(format="%+.2f"),
            "centile_se": st.column_config.NumberColumn(format="%.2f"),
            "value": st.column_config.NumberColumn(format="%.4g"),
        },
    )
    st.caption("Click a column header to sort.")
with heat_tab:
    st.caption(
        f"z of the first {len(z)} people across all {z.shape[1]} IDPs; "
        "red = above, blue = below the median."
    )
    st.plotly_chart(cohort_z_heatmap(z), width="stretch", key="cohort_heatmap")
if group.demo:
    st.caption(common.FCON_CITATION)
