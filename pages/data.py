"""Data: upload a table, say which column is what, and read the validation report."""

import pandas as pd
import streamlit as st

from normcore.explore import UNKNOWN_LEVEL, guess_sex_coding
from normcore.schema import coerce_categories
from pages import common

NONE = "(none)"

st.header("Data")
st.write(
    "Upload a table with one row per person: age, sex, site and brain measures (IDPs). "
    "It stays in this browser session's memory and is never written to disk."
)
st.file_uploader(
    "Table (CSV, TSV, Excel or Parquet)",
    type=["csv", "tsv", "txt", "xlsx", "xls", "parquet", "pq"],
    key="data_upload",
    on_change=common.read_upload,
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
columns = [str(c) for c in table.columns]


def pick(label: str, current: str | None, key: str, help: str | None = None) -> str | None:
    """A column select box with a '(none)' option; the mapping keeps the answer."""
    options = [NONE, *columns]
    index = options.index(current) if current in options else 0
    value = st.selectbox(label, options, index=index, key=key, help=help)
    return None if value == NONE else value


st.subheader("Which column is what")
cols = st.columns(4)
with cols[0]:
    mapping.id = pick("Person id", mapping.id, "map_id", "Carried through to the results.")
with cols[1]:
    mapping.age = pick("Age (years)", mapping.age, "map_age")
with cols[2]:
    mapping.sex = pick("Sex", mapping.sex, "map_sex")
with cols[3]:
    mapping.site = pick("Site / scanner", mapping.site, "map_site")

if model is not None:
    schema = model.schema_
    levels = model.encoder_.levels
    if "sex" in schema.categorical and mapping.sex:
        values = sorted(coerce_categories(table[mapping.sex]).dropna().unique().tolist())[:10]
        if any(v not in mapping.sex_coding for v in values):
            mapping.sex_coding = guess_sex_coding(values, levels["sex"])
        st.markdown("**Sex coding**: which of the model's levels each value in your table means.")
        boxes = st.columns(max(len(values), 1))
        for v, box in zip(values, boxes):
            with box:
                opts = list(levels["sex"])
                cur = mapping.sex_coding.get(v, opts[0])
                mapping.sex_coding[v] = st.selectbox(
                    f"'{v}' means",
                    opts,
                    index=opts.index(cur) if cur in opts else 0,
                    key=f"map_sexcode_{v}",
                    format_func=lambda lv: common.level_name("sex", lv, key),
                )
    if "site" in schema.categorical and not mapping.site:
        site_opts = [UNKNOWN_LEVEL, *levels["site"]]
        cur = mapping.site_value or UNKNOWN_LEVEL
        mapping.site_value = st.selectbox(
            "No site column: score everyone as site",
            site_opts,
            index=site_opts.index(cur),
            key="map_site_value",
            format_func=lambda v: common.level_name("site", v, key),
            help="'any / unknown' uses the model's site-averaged level.",
        )
    for cov in [c for c in schema.categorical if c not in ("sex", "site")]:
        chosen = pick(f"Covariate '{cov}'", mapping.covariates.get(cov), f"map_cov_{cov}")
        if chosen:
            mapping.covariates[cov] = chosen
        else:
            mapping.covariates.pop(cov, None)

    matched = [i for i in schema.idps if mapping.idps.get(i) in columns]
    st.markdown(
        f"**Brain measures**: {len(matched)} of the model's {len(schema.idps)} IDPs "
        "found in the table by name."
    )
    with st.expander("Map IDP columns by hand", expanded=len(matched) < len(schema.idps)):
        editor = pd.DataFrame(
            {
                "model IDP": list(schema.idps),
                "table column": [mapping.idps.get(i) for i in schema.idps],
            }
        )
        edited = st.data_editor(
            editor,
            key="map_idps",
            hide_index=True,
            width="stretch",
            disabled=["model IDP"],
            column_config={"table column": st.column_config.SelectboxColumn(options=columns)},
        )
        mapping.idps = {
            i: c
            for i, c in zip(edited["model IDP"], edited["table column"])
            if isinstance(c, str) and c
        }

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
