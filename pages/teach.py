"""Teach: simulate data with a known truth, train a small model live, compare the centiles,
and see the model's joint draws of two measures over their fans."""

import pandas as pd
import streamlit as st

from normcore import Schema
from normcore.explore import curve_distance, fan_grid, pit_matrix, share_between, truth_long
from normcore.figures.charts import (
    FAN_QUANTILES,
    centile_fan,
    joint_draws_over_fans,
    loss_curve,
)
from normcore.figures.diagnostics import pit_histogram
from normcore.synthetic import SyntheticSpec, idp_names, simulate, true_quantiles
from pages import common

common.run_through_app()

TEACH_HELD_OUT = 500
"""New people simulated after training, whose centiles make the PIT histogram."""
TEACH_DRAWS = 400
"""Joint draws shown over a pair of fans: enough for a 2-98 band's share to read to a few
points."""

st.header("Teach: centiles on data whose truth we know")
st.write(
    "Real brain data never tell us a person's true centile. Here you set how the synthetic "
    "measures behave, a small diffusion model learns them in about a minute, and its fan "
    "is drawn over the true centiles (dashed)."
)

with st.form("teach_spec"):
    c1, c2, c3, c4 = st.columns(4)
    n_idps = c1.slider("Brain measures", 2, 10, 3, key="teach_d")
    hetero = c2.slider(
        "Heteroscedasticity",
        0.0,
        2.0,
        1.0,
        0.1,
        key="teach_h",
        help="How much the spread changes with age (0 = constant).",
    )
    multi = c3.slider(
        "Multimodality",
        0.0,
        2.0,
        0.5,
        0.1,
        key="teach_m",
        help="Weight of a second mode that grows with age (a sub-group).",
    )
    n = c4.slider("People", 200, 4000, 1500, 100, key="teach_n")
    go = st.form_submit_button("Simulate and train", type="primary")

if go:
    spec = SyntheticSpec(n_idps=n_idps, heteroscedasticity=hetero, multimodality=multi, n_sites=2)
    df = simulate(spec, n, seed=1)
    settings = dict(max_epochs=400, reference_samples=2000, grid_points=21, max_seconds=60.0)
    job = common.TrainingJob(df, Schema.infer(df), settings).start()
    st.session_state["teach_job"] = (job, spec)


def explain() -> None:
    st.markdown(
        "**Centile.** A person's centile is the share of healthy people of the same age, sex "
        "and site with a smaller value: the 90th centile means 90% are below. It makes "
        "measures on different scales comparable without assuming a bell curve.\n\n"
        "**z-score.** The z-score is the centile translated to standard-normal units: "
        "centile 97.5 is z = 1.96, centile 50 is z = 0. Beyond |z| = 1.96 lie 5% of healthy "
        "people per measure, so a flag is a prompt to look, not a diagnosis.\n\n"
        "**PIT histogram.** Collect every new healthy person's centile and draw their "
        "histogram: a calibrated model gives a flat one, because each tenth of the range is "
        "equally likely. A U shape means the fan is too narrow; a hump means too wide."
    )


@st.fragment(run_every=1.0)
def teach_result() -> None:
    job, spec = st.session_state["teach_job"]
    if not job.done:
        fraction = float(job.status.get("fraction") or 0.0)
        st.progress(min(max(fraction, 0.0), 1.0), text=common.training_progress_text(job))
        if job.history:
            st.plotly_chart(loss_curve(job.history, height=220), width="stretch", key="teach_loss")
        return
    if job.error or job.model is None:
        st.error(job.error or "Training stopped without a model.")
        return
    model = job.model
    schema = model.schema
    names = idp_names(spec)
    c1, c2 = st.columns([1, 3])
    with c1:
        idp = st.selectbox("Measure", names, key="teach_idp")
        sex = st.radio("Sex", ["F", "M"], horizontal=True, key="teach_sex")
        site = st.radio("Site", ["S0", "S1"], horizontal=True, key="teach_site")
        st.caption(f"Trained on {model.training_summary['n']} people in {model.fit_seconds:.0f} s.")
    grid = fan_grid(model.training_summary, schema, {"sex": sex, "site": site}, margin=0.0)
    cent = model.centiles(grid, FAN_QUANTILES)
    truth = truth_long(grid, names, FAN_QUANTILES, true_quantiles(spec, grid, FAN_QUANTILES))
    err = curve_distance(cent, truth, schema.age)
    with c2:
        st.plotly_chart(
            centile_fan(cent, idp, truth=truth, title=f"{idp}: learned vs true"),
            width="stretch",
            key="teach_fan",
        )
    st.caption(
        f"Mean distance between learned and true centile curves: {err:.3g} "
        "(in the measure's units)."
    )
    new_people = simulate(spec, TEACH_HELD_OUT, seed=2)
    st.plotly_chart(
        pit_histogram(
            pit_matrix(model.score(new_people)),
            title=f"PIT histogram of {TEACH_HELD_OUT} new simulated people (not trained on)",
            height=300,
        ),
        width="stretch",
        key="teach_pit",
    )
    joint_draws(job, spec, cent, truth, sex, site)


def joint_draws(job, spec: SyntheticSpec, cent: pd.DataFrame, truth: pd.DataFrame,
                sex: str, site: str) -> None:  # fmt: skip
    """The model's joint draws of two measures at one age over their fans."""
    model, names = job.model, idp_names(spec)
    st.subheader("Joint draws over a pair of fans")
    c1, c2, c3 = st.columns(3)
    x = c1.selectbox("First measure", names, index=0, key="teach_pair_x")
    y = c2.selectbox("Second measure", [n for n in names if n != x], key="teach_pair_y")
    lo, hi = model.age_range
    at_age = c3.slider(
        "Draws at age", float(round(lo)), float(round(hi)), float(round((lo + hi) / 2)),
        key="teach_draw_age",
    )  # fmt: skip
    covs = pd.DataFrame({"age": [at_age], "sex": [sex], "site": [site]})
    model_key = f"teach:{id(job)}"
    draws = common.sample(model, model_key, covs, TEACH_DRAWS)
    margins = common.centiles(model, model_key, covs)
    st.plotly_chart(
        joint_draws_over_fans(cent, draws, margins, x, y, at_age, truth=truth),
        width="stretch",
        key="teach_joint",
    )
    inside = [share_between(draws, margins, i, 0.02, 0.98) for i in (x, y)]
    st.caption(
        f"{TEACH_DRAWS} draws of both measures together at age {at_age:g} ({sex}, {site}). "
        f"Within the 2nd-98th centile band at that age: {inside[0]:.0%} of {x}'s draws and "
        f"{inside[1]:.0%} of {y}'s (96% if the draws and the fans are one law). The "
        "cloud on the right shows what no fan can: how the two measures vary together."
    )


if "teach_job" in st.session_state:
    teach_result()
explain()
