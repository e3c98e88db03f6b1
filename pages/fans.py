"""Centile fans: age-conditioned centile bands per IDP, with people as points."""

import streamlit as st

from normcore.explore import fan_grid, fan_points
from normcore.figures.charts import fan_small_multiples
from normcore.idp_groups import default_idps, label
from pages import common
from pages.common import md

common.run_through_app()

model, key, name = common.require_model()
schema = model.schema

st.header("Centile fans")
st.caption(
    "Bands: 2-98th, 10-90th and 25-75th centiles and the median, for the chosen sex and "
    "site. Grey: ages outside the training data, where the model extrapolates."
)

top = st.columns([3, 1])
with top[0]:
    idps = st.multiselect(
        "Brain measures",
        list(schema.idps),
        default=default_idps(schema.idps),
        format_func=label,
        key="fan_idps",
        max_selections=12,
    )
with top[1]:
    n_cols = st.radio("Columns", [1, 2, 3], index=1, horizontal=True, key="fan_cols")
fixed = common.category_pickers(model, key, "fan")

group, err = common.cohort(model, key)
show_points = False
if group is not None:
    show_points = st.toggle(f"Show people: {md(group.source)}", value=True, key="fan_points")
elif isinstance(err, common.AbandonedUpload):
    st.warning(md(str(err)))
elif err is not None:
    st.warning(
        "The uploaded table is not mapped to this model yet, so no people are drawn "
        "(see the Data page)."
    )

if not idps:
    st.info("Choose at least one brain measure.")
    st.stop()

grid = fan_grid(model.training_summary, schema, fixed)
cent = common.centiles(model, key, grid)
points = None
if show_points and group is not None:
    scores = common.score(model, key, group.table, group.key)
    points = fan_points(scores, group.table, schema, fixed, idps)
site = fixed.get("site")
age_range = model.age_range
if site and site in model.training_summary.get("level_age_ranges", {}).get("site", {}):
    age_range = model.training_summary["level_age_ranges"]["site"][site]
    st.caption(
        f"Site {md(site)} contributed training people aged {age_range[0]:.0f}-{age_range[1]:.0f}: "
        "outside that range its fan leans on the other sites."
    )
context = common.fan_context(model, key, fixed)
if "site_age_range" in context:
    lo, hi = context["site_age_range"]
    st.caption(
        f"Site {md(site)} was adapted from controls aged {lo:.0f}-{hi:.0f}: its fan is "
        "shaded (purple) outside those ages, where it rests on the other sites."
    )
if "reference_ages" in context:
    st.caption(
        "Ticks along the bottom: the ages of the reference people of this sex and site; "
        "shaded orange: ages with fewer than 5 of them within 2.5 years."
    )
fig = fan_small_multiples(
    cent,
    idps,
    age=schema.age,
    points=points,
    age_range=age_range,
    columns=n_cols,
    points_name="people",
    **context,
)
st.plotly_chart(fig, width="stretch", key="fan_chart")
if common.is_demo(key):
    st.caption(common.FCON_CITATION)
