"""Data: upload a table, say which column is what, and read the validation report."""

import streamlit as st

from normcore.formats import upload_types
from pages import common

common.run_through_app()

st.header("Data")
st.write(
    "Upload a table with one row per person: age, sex, site and brain measures (IDPs). "
    "It stays in this browser session's memory and is never written to disk."
)
st.file_uploader(
    "Table (CSV, TSV, Excel or Parquet)",
    type=upload_types(),
    key="data_upload",
    on_change=common.read_upload,
    args=("table",),
)
if st.session_state.get("table_error"):
    st.error(f"This file could not be read. {st.session_state['table_error']}")
    st.stop()

table = st.session_state.get("table")
if table is None:
    st.info(
        "No table uploaded yet. Until you upload one, the dashboard shows the demo "
        "model's held-out fcon1000 people."
    )
    st.stop()

st.success(f"**{st.session_state['table_name']}**: {len(table)} rows, {table.shape[1]} columns.")
for note in table.attrs.get("notes", []) if isinstance(table.attrs.get("notes"), list) else []:
    st.info(note)
with st.expander("First rows"):
    st.dataframe(table.head(20), width="stretch")

found = common.active_model()
model, key = (found[0], found[1]) if found else (None, "")
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
            st.error(
                "The table cannot be scored yet:\n" + "\n".join(f"- {p}" for p in report.errors)
            )
        else:
            st.success(
                f"Ready to score {len(group.table)} people with the active model. "
                "Open **Cohort** or **Individual**."
            )
        if report.warnings:
            st.warning("Worth knowing:\n" + "\n".join(f"- {p}" for p in report.warnings))
else:
    st.info("No model is active: map the columns above, then train one on the Model page.")
