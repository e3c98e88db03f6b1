"""Dependence: does the model reproduce how IDPs vary together, not only each one alone?"""

import pandas as pd
import streamlit as st

from normcore.explore import (
    age_slider_range,
    correlation_pair,
    model_pair_correlation_by_age,
    near_age,
    real_pair_correlation_by_age,
)
from normcore.figures.charts import (
    correlation_heatmaps,
    dependence_contours,
    pair_correlation_by_age,
)
from normcore.idp_groups import default_idps, label
from pages import common
from pages.common import md

common.run_through_app()

#: Real people drawn beside the model's samples: those within this many years of the age.
NEAR_YEARS = 5.0

model, key, name = common.require_model()
schema = model.schema
idps = list(schema.idps)
if len(idps) < 2:
    st.info("This model has a single brain measure: there is no dependence to show.")
    st.stop()

st.header("Dependence")
group, _ = common.cohort(model, key)
real = group.table if group is not None else None

st.subheader("One pair at one age")
first = default_idps(idps, 2)
c1, c2, c3 = st.columns([2, 2, 1])
with c1:
    x = st.selectbox("x", idps, index=idps.index(first[0]), format_func=label, key="dep_x")
with c2:
    y = st.selectbox("y", idps, index=idps.index(first[1]), format_func=label, key="dep_y")
age_min, age_max, age_start = age_slider_range(model.age_range)
with c3:
    age = st.slider("age", age_min, age_max, age_start, 1.0, key="dep_age")
fixed = common.category_pickers(model, key, "dep")
draws = common.pair_draws(model, key, age, fixed)
near = near_age(real, schema.age, age, NEAR_YEARS, fixed) if real is not None else None
fig = dependence_contours(
    draws,
    near,
    x,
    y,
    title=f"model samples at age {age:.0f} (contours) and real people within "
    f"{NEAR_YEARS:.0f} years of it (dots)",
)
st.plotly_chart(fig, width="stretch", key="dep_contours")

st.subheader("Correlation: real people vs model")
if real is None:
    st.info("Upload a table (Data page) to compare the model's correlations with real people.")
else:
    chosen = st.multiselect(
        "IDPs",
        idps,
        default=default_idps(idps, 10),
        format_func=label,
        key="dep_heat_idps",
        max_selections=40,
    )
    if len(chosen) >= 2:
        model_draws = common.draws_like(model, key, group)
        r_real, r_model = correlation_pair(real, model_draws, chosen)
        st.caption(
            "Spearman correlation across people. Model: one sample at each real person's "
            "covariates, so both sides mix the same ages, sexes and sites."
        )
        st.plotly_chart(correlation_heatmaps(r_real, r_model), width="stretch", key="dep_heat")

    st.subheader(f"How the correlation of {md(label(x))} and {md(label(y))} changes with age")
    grid, by_age = common.draws_by_age(model, key, fixed)
    table = pd.concat(
        [
            model_pair_correlation_by_age(by_age, grid, schema.age, x, y),
            real_pair_correlation_by_age(
                near_age(real, schema.age, age, float("inf"), fixed), schema.age, x, y
            ),
        ]
    )
    st.plotly_chart(pair_correlation_by_age(table), width="stretch", key="dep_by_age")
    st.caption(
        "Real: equal-count age bins (site mix varies with age); "
        f"model: {common.AGE_DRAWS} samples per age."
    )
if common.is_demo(key):
    st.caption(common.FCON_CITATION)
