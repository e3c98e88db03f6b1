"""Individual: one person's deviation profile (also given IDPs the user picks, with the
imputed bands of IDPs the person lacks), multivariate deviation, fans, one-page report."""

import pandas as pd
import streamlit as st

from normcore import DataError, NormativeModel
from normcore.explore import (
    default_given,
    fan_grid,
    imputed_band_z,
    level_text,
    model_card,
    person_profile,
    unseen_levels_message,
    unseen_levels_summary,
)
from normcore.figures.charts import IMPUTED_LABEL, centile_fan, profile_comparison
from normcore.idp_groups import default_idps, label
from normcore.report import individual_report_html
from normcore.site_advice import SAFE_CONTROLS_PER_SEX
from pages import common
from pages.common import md

common.run_through_app()


@st.cache_data(show_spinner=False, max_entries=8, scope="session")
def score_given(
    _model: NormativeModel, model_key: str, person: pd.DataFrame, given: tuple[str, ...]
) -> pd.DataFrame:
    """The person's centiles given `given` (conditional draws: about a second), kept for
    this session only (a person's values are not shared)."""
    return _model.score(person, given=list(given))


model, key, name = common.require_model()
schema = model.schema

st.header("Individual")
group, err = common.cohort(model, key)
common.stop_if_abandoned(err)
mode_options = (["From the cohort"] if group is not None else []) + ["Type values"]
mode = st.radio("Person", mode_options, horizontal=True, key="ind_mode")

if mode == "From the cohort":
    table = group.table
    ids = (
        table[schema.id].astype(str).tolist()
        if schema.id and schema.id in table
        else [f"row {i}" for i in range(len(table))]
    )
    common.say_cohort_source(group)
    pos = st.selectbox(
        f"Choose a person ({md(group.source)})",
        range(len(table)),
        format_func=lambda i: f"{ids[i]} · age {float(table[schema.age].iloc[i]):.0f}",
        key="ind_person",
    )
    person = table.iloc[[pos]].reset_index(drop=True)
else:
    st.caption(
        "Enter the covariates; the measures start at the model's median for them. "
        "Edit the values you have measured."
    )
    age = st.number_input(
        "age (years)", 0.0, 120.0, float(sum(model.age_range) / 2), key="ind_age"
    )
    fixed = common.category_pickers(model, key, "ind")
    covs = pd.DataFrame({schema.age: [age], **{c: [v] for c, v in fixed.items()}})
    medians = common.centiles(model, key, covs, (0.5,), table_key="typed")
    values = st.data_editor(
        pd.DataFrame({"IDP": medians["idp"], "value": medians["value"]}),
        hide_index=True,
        disabled=["IDP"],
        key="ind_values",
        height=260,
        width="stretch",
    )
    person = covs.copy()
    if schema.id:
        person[schema.id] = "typed-in person"
    for idp, v in zip(values["IDP"], values["value"]):
        person[idp] = v

try:
    report = model.check(person)
    if report.errors:
        raise DataError("This person cannot be scored:", problems=report.errors)
    scores = model.score(person)
    dev = model.deviation(person)
except (DataError, ValueError) as exc:  # ValueError: blank cells, a model without masks
    common.show_problems(exc)
    st.stop()
unseen = unseen_levels_summary(scores, person)
notes = [unseen_levels_message(unseen, SAFE_CONTROLS_PER_SEX)] if unseen else []
notes += [str(w) for w in report.warnings if w.column not in unseen]  # unseen: said above
for note in notes:
    st.warning(md(note))

profile = person_profile(scores, 0)
n_flag = int(profile["extreme"].sum())
m1, m2, m3 = st.columns(3)
m1.metric(
    "Multivariate deviation centile",
    f"{dev['deviation_centile'].iloc[0]:.1f}",
    help="How unusual the whole profile is among model samples of the same sex and site "
    "(100 = more unusual than all of them).",
)
m2.metric(
    "Measures with |z| > 1.96",
    f"{n_flag} of {len(profile)}",
    help=f"About {0.05 * len(profile):.1f} expected by chance in a healthy person.",
)
worst = profile.loc[profile["z"].abs().idxmax()]
m3.metric(
    f"Most extreme: {md(label(worst['idp']))}",
    f"z = {worst['z']:+.2f}",
    help=f"{md(worst['idp'])}: centile {worst['centile']:.1f}",
)

st.subheader("Deviation profile")
given = st.multiselect(
    "... and the same (measures the others are scored given)",
    list(schema.idps),
    default=default_given(schema.idps),
    format_func=label,
    key="ind_given",
    help="Score every other measure given these measures' values as well as age, sex and "
    "site: 'is this hippocampus small for a head of this size?'. Drawn from the joint "
    "model: about a second.",
)
conditional = None
if given:
    try:
        with st.spinner("Scoring given " + md(", ".join(given)) + " ..."):
            given_scores = score_given(model, key, person, tuple(given))
        conditional = person_profile(given_scores, 0)
    except (DataError, ValueError) as exc:  # a model trained without conditioning masks
        st.info(
            md(f"Only the profile for age, sex and site is shown: {exc}".rstrip(".") + ".")
        )
imputed = imputed_band_z(model, person, scores)
st.caption(
    f"z of each of the {len(profile)} measures, grouped by region: compared with people "
    "of the same age, sex and site"
    + (f" (plain bars) and of the same {md(', '.join(map(label, given)))} too (hatched)"
       if conditional is not None else "")
    + "; red beyond |z| = 1.96 (shaded: the central 95%), whiskers: the centile's "
    "Monte-Carlo interval."
    + (f" Grey bars: {IMPUTED_LABEL}, the 2nd-98th centile band of a measure this person "
       "lacks, given the measures they have; the tick is its median."
       if len(imputed) else "")
)
profile_fig = profile_comparison(profile, conditional, imputed, given)
with st.container(height=min(700, int(profile_fig.layout.height) + 20)):
    st.plotly_chart(profile_fig, width="stretch", key="ind_profile")
with st.expander("All measures (sortable)"):
    st.dataframe(
        profile[["group", "idp", "value", "centile", "z", "extreme"]],
        hide_index=True,
        width="stretch",
        column_config={
            "centile": st.column_config.NumberColumn(format="%.1f"),
            "z": st.column_config.NumberColumn(format="%+.2f"),
        },
    )

st.subheader("On the centile fans")
flagged = profile.loc[profile["extreme"]].sort_values("z", key=abs, ascending=False)["idp"].tolist()
chosen = st.multiselect(
    "Measures",
    list(schema.idps),
    default=(flagged[:2] + default_idps(schema.idps, 2))[:2] or default_idps(schema.idps, 2),
    format_func=label,
    key="ind_fans",
    max_selections=6,
)
fixed_person = {c: str(person[c].iloc[0]) for c in schema.categorical}
grid = fan_grid(model.training_summary, schema, fixed_person)
cent = common.centiles(model, key, grid)
context = common.fan_context(model, key, fixed_person)
fan_figs = []
fan_cols = st.columns(2)
for k, idp in enumerate(chosen):
    row = profile[profile["idp"] == idp].iloc[0]
    me = pd.DataFrame(
        {
            "age": [float(person[schema.age].iloc[0])],
            "value": [row["value"]],
            "centile": [row["centile"]],
            "label": ["this person"],
        }
    )
    fig = centile_fan(
        cent, idp, age=schema.age, highlight=me, age_range=model.age_range, height=360,
        **context,
    )
    fan_figs.append(fig)
    with fan_cols[k % 2]:
        st.plotly_chart(fig, width="stretch", key=f"ind_fan_{idp}")

id_cols = [schema.id] if schema.id and schema.id in person else []
meanings = common.sex_meanings(model, key)
who = {c: person[c].iloc[0] for c in [*id_cols, schema.age]}
who.update({c: level_text(c, person[c].iloc[0], meanings) for c in schema.categorical})


def report() -> bytes:
    """Built only when the button is clicked: it embeds plotly.js (a few MB)."""
    return individual_report_html(
        who,
        profile,
        float(dev["deviation_centile"].iloc[0]),
        [profile_fig, *fan_figs],
        {"model": name, **model_card(model)},
        notes=notes,
        age=float(person[schema.age].iloc[0]),
        age_range=model.age_range,
    ).encode()


st.download_button(
    "Download one-page report (HTML)",
    data=report,
    on_click="ignore",
    type="primary",
    file_name=f"normcore_report_{who.get(schema.id, 'person')}.html",
    mime="text/html",
    key="ind_report",
)
if common.is_demo(key):
    st.caption(common.FCON_CITATION)
