"""Data: upload a table (or FreeSurfer outputs), say which column is what, read the report."""

import streamlit as st

from normcore import DataError
from normcore.explore import join_covariates
from normcore.formats import upload_types
from normcore.freesurfer import apply_matching, match_columns
from pages import common
from pages.common import md

common.run_through_app()

st.header("Data")
st.write(
    "Upload a table with one row per person: age, sex, site and brain measures (IDPs), or "
    "FreeSurfer outputs (a .zip of subjects' stats folders, a .stats file, an "
    "asegstats2table/aparcstats2table table) with a second table of each subject's age, "
    "sex and site. Files stay in this browser session's memory and are never written to disk."
)
if not common.table_uploader(
    "Table (CSV, TSV, Excel or Parquet) or FreeSurfer outputs (.zip, .stats)",
    "table",
    [*upload_types(), *common.FREESURFER_TYPES],
):
    st.stop()

table = st.session_state.get("table")
lost = common.abandoned_uploads()
if lost and (table is None or st.session_state.get("table_name") not in lost):
    st.warning(
        f"Your upload ({md(', '.join(lost))}) was not finished: the page was left before the "
        "file was read. Upload it again above."
    )
if table is None:
    st.info(
        "No table uploaded yet. Until you upload one, the dashboard shows the demo "
        "model's held-out fcon1000 people, and says so."
    )
    st.stop()

found = common.active_model()
model, key = (found[0], found[1]) if found else (None, "")

# ------------------------------------------------------------ FreeSurfer: covariates, atlas
if table.attrs.get("freesurfer"):
    if not table.attrs.get("joined"):
        st.session_state["fs_table"] = table
        st.session_state["fs_key"] = st.session_state.get("table_key")
    raw = st.session_state["fs_table"]
    if "age" not in [str(c).lower() for c in raw.columns]:
        st.markdown(
            f"**{md(st.session_state['table_name'])}** holds FreeSurfer measures of "
            f"{len(raw)} subjects but no age, sex or site: upload a table of those, one row "
            "per subject, with the same subject ids."
        )
        common.table_uploader(
            "Covariates: subject id, age, sex, site (CSV, TSV, Excel or Parquet)",
            "covariates",
            upload_types(),
        )
        covariates = st.session_state.get("covariates")
        if covariates is None:
            st.stop()
        join_key = f"{st.session_state['fs_key']}+{st.session_state['covariates_key']}"
        if st.session_state.get("table_key") != join_key:
            try:
                joined, notes = join_covariates(raw, covariates)
            except DataError as err:
                common.show_problems(err)
                st.stop()
            joined.attrs.update({"freesurfer": True, "joined": True, "notes": notes})
            st.session_state.update({"table": joined, "table_key": join_key})
            st.session_state.pop(common.mapping_key("table"), None)
        table = st.session_state["table"]
    if model is not None:
        # Matched once per table and model: the message says what the table held before
        # its other-version columns were renamed to the model's IDPs.
        matched_for = (st.session_state.get("table_key"), key)
        if st.session_state.get("fs_matched") != matched_for:
            matching = match_columns(table, model.idps)
            st.session_state["fs_message"] = matching.message
            if matching.renames:
                table = apply_matching(table, matching)
                st.session_state["table"] = table
                st.session_state.pop(common.mapping_key("table"), None)
            st.session_state["fs_matched"] = matched_for
        st.info(md(st.session_state["fs_message"]))

st.success(
    f"**{md(st.session_state['table_name'])}**: {len(table)} rows, {table.shape[1]} columns."
)
for note in table.attrs.get("notes", []) if isinstance(table.attrs.get("notes"), list) else []:
    st.info(md(note))
with st.expander("First rows"):
    st.dataframe(table.head(20), width="stretch")

mapping = common.mapping_for(model)

st.subheader("Which column is what")
common.column_mapper(table, mapping, model, key, prefix="map")

if model is not None:
    st.subheader("Validation against the active model")
    group, err = common.cohort(model, key)
    if err is not None:
        common.show_problems(err)
    else:
        report = model.check(group.table)
        if report.errors:
            st.error("The table cannot be scored yet:\n" + common.bullets(report.errors))
        else:
            st.success(
                f"Ready to score {len(group.table)} people with the active model. "
                "Open **Cohort** or **Individual**."
            )
        if report.warnings:
            st.warning("Worth knowing:\n" + common.bullets(report.warnings))
else:
    st.info("No model is active: map the columns above, then train one on the Model page.")
