"""Model: read the card, adapt it to a new site, download or upload a bundle, train one."""

import re
import uuid

import pandas as pd
import streamlit as st

from normcore import BundleError, DataError, NormativeModel
from normcore.adapt import plan_adaptation
from normcore.denoisers import BACKBONES
from normcore.explore import (
    apply_mapping,
    category_counts,
    describe_counts,
    holdout_rows,
    kept_weights,
    model_card,
    training_idp_candidates,
    training_schema,
)
from normcore.figures.charts import loss_curve
from normcore.formats import upload_types
from normcore.schema import coerce_categories, validate_training
from normcore.site_advice import SAFE_CONTROLS_PER_SEX, adaptation_warnings
from pages import common
from pages.common import md

common.run_through_app()

#: Learning steps of an adaptation (the engine's default): about 15 s on the demo model.
ADAPT_STEPS = 400


def collect_adaptation() -> None:
    """Make a finished adaptation the active model once, then redraw the whole app.

    Runs at the top of the page (not only in the polling fragment), so an adaptation
    that finished while the user was on another page is picked up on return; the full
    rerun lets the sidebar show the new model and its adapted sites. The cache key is
    random: caches are shared by every session (see the training key below).
    """
    job = st.session_state.get("adapt_job")
    if job is None or not job.done or st.session_state.get("adapt_collected") is job:
        return
    st.session_state["adapt_collected"] = job
    if job.model is not None:
        common.add_session_model(
            "adapted",
            job.model,
            f"adapted:{uuid.uuid4().hex}",
            f"Adapted to site '{job.site}' (from {job.base_name})",
        )
    st.rerun()


collect_adaptation()
st.header("Model")
found = common.active_model()

# ------------------------------------------------------------------------- model card
if found is not None:
    model, key, name = found
    st.subheader(f"Model card: {name}")
    card = model_card(model)
    left, right = st.columns([1, 1])
    with left:
        st.dataframe(
            pd.DataFrame({"": list(card), "value": [str(v) for v in card.values()]}),
            hide_index=True,
            width="stretch",
        )
    with right:
        group, _ = common.cohort(model, key)
        if group is not None and common.is_demo(key) and "uploaded" not in group.source:
            st.markdown(f"**Calibration on {len(group.table)} {md(group.source)}**")
            st.dataframe(
                common.calibration(model, key, group.table, group.key),
                hide_index=True,
                width="stretch",
                column_config={
                    "mean coverage": st.column_config.NumberColumn(format="%.3f"),
                    "worst coverage": st.column_config.NumberColumn(format="%.3f"),
                },
            )
            st.caption(
                "Share of held-out people inside each central centile interval, "
                "averaged over IDPs: a calibrated model matches the interval's size."
            )
        cal = st.session_state.get("calibration", {}).get(key)
        if cal is not None:
            st.markdown("**Calibration on the held-out part of the training table**")
            st.dataframe(cal, hide_index=True, width="stretch")
        if model.history:
            kept = kept_weights(model.history)
            st.plotly_chart(
                loss_curve(model.history, height=260, kept=kept), width="stretch", key="card_loss"
            )
            if kept is not None:
                st.caption(
                    f"The model keeps the weights of epoch {model.history[kept]['epoch']}, "
                    "where the validation loss was lowest (ringed)."
                )
    st.download_button(
        "Download this model (.normcore bundle)",
        data=model.to_bytes,
        on_click="ignore",
        file_name=("fcon1000" if common.is_demo(key) else "normcore-model") + ".normcore",
        mime="application/octet-stream",
        key="download_bundle",
    )
    if common.is_demo(key):
        st.caption(common.FCON_CITATION)


# -------------------------------------------------------------------- adapt to my site
@st.fragment(run_every=1.0)
def adapt_status() -> None:
    """Poll the background adaptation; when it ends, redraw the app to collect it."""
    job: common.AdaptJob = st.session_state["adapt_job"]
    if job.done:
        st.rerun(scope="app")
    status = job.status
    step, fraction = status.get("step"), float(status.get("fraction") or 0.0)
    if step is None:
        text = "Starting ..."
    elif step < job.steps:
        text = (
            f"Learning the offset of site '{md(job.site)}': step {step} of {job.steps}, "
            f"loss {status.get('loss', float('nan')):.3f}"
        )
    else:
        text = f"Offset learned; rebuilding the centile table for site '{md(job.site)}' ..."
    st.progress(min(max(fraction, 0.0), 1.0), text=text)


def adapt_result(job: common.AdaptJob) -> None:
    """What the last adaptation did, its warnings, and the adapted bundle to download."""
    if job.error:
        st.error(job.error)
        return
    record = job.model.adaptations[-1]
    st.success(
        f"Adapted to site **{md(record['level'])}** from {record['n_controls']} controls in "
        f"{job.finished - job.started:.0f} s. The adapted model is now the active model "
        f"(sidebar: *{common.CHOICES['adapted']}*); score your site's people with it."
    )
    warnings = adaptation_warnings(record)
    if warnings:
        st.warning("Few controls:\n" + common.bullets(warnings))
    st.download_button(
        "Download the adapted model (.normcore bundle)",
        data=job.model.to_bytes,
        on_click="ignore",
        file_name=f"normcore-{re.sub(r'[^A-Za-z0-9_.-]+', '_', record['level'])}.normcore",
        mime="application/octet-stream",
        key="download_adapted",
        type="primary",
    )


def choose_site(controls: pd.DataFrame, mapping) -> pd.DataFrame | None:
    """The controls' rows of one site: the site column's only value, the one the user
    picks among several, or all rows under a name the user types. None until settled."""
    if mapping.site:
        sites = category_counts(controls[mapping.site])
        if len(sites) == 1:
            return controls
        st.warning(
            f"These controls come from {len(sites)} sites ({md(describe_counts(sites))}). "
            "A model is adapted to one site at a time: choose which."
        )
        chosen = st.selectbox("Adapt to site", list(sites), key="adapt_site_pick")
        return controls[coerce_categories(controls[mapping.site]) == chosen].reset_index(drop=True)
    name = st.text_input(
        "No site column: name your site",
        key="adapt_site_name",
        placeholder="e.g. MyClinic_3T",
        help="The model will know the site by this name: use the same name in the site "
        "column of the tables you score with the adapted model.",
    ).strip()
    mapping.site_value = name or None
    if not name:
        st.info("Name the site these controls were scanned at, or map a site column.")
        return None
    return controls


def adapt_section(model: NormativeModel, key: str, name: str) -> None:
    """Upload a new site's healthy controls, check them, and adapt the active model."""
    st.subheader("Adapt to my site")
    st.write(
        "A scanner the model has not seen shifts brain measures by as much as many clinical "
        "effects. From healthy controls scanned at your site, adaptation learns only that "
        "site's offset, keeps the rest of the model, and makes the result the active model. "
        f"Aim for at least {SAFE_CONTROLS_PER_SEX} controls per sex."
    )
    schema = model.schema
    if "site" not in schema.categorical:
        st.info("This model has no site covariate, so there is no site to adapt.")
        return
    job = st.session_state.get("adapt_job")
    if job is not None and not job.done:
        adapt_status()
        return
    if job is not None and st.session_state.get("adapt_collected") is job:
        adapt_result(job)

    if not common.table_uploader(
        "Healthy controls from your site (CSV, TSV, Excel or Parquet)", "controls", upload_types()
    ):
        return
    controls = st.session_state.get("controls")
    if controls is None:
        st.caption(
            "Same columns as a cohort table (age, sex, site, the model's brain measures); "
            "the file stays in memory."
        )
        return
    st.markdown(
        f"**{md(st.session_state['controls_name'])}**: {len(controls)} rows. "
        "Which column is what:"
    )
    mapping = common.mapping_for(model, "controls")
    common.column_mapper(controls, mapping, model, key, prefix="adapt_map", site_for_everyone=False)
    rows = choose_site(controls, mapping)
    if rows is None:
        return
    try:
        mapped = apply_mapping(rows, mapping, schema)
    except DataError as err:
        st.error("These controls cannot be used yet.")
        common.show_problems(err)
        return
    try:
        plan = plan_adaptation(mapped, schema, model.levels, model.age_range, column="site")
    except DataError as err:
        st.error("Fix these in the controls table:\n" + common.bullets(err.problems or [str(err)]))
        return
    worth_knowing = [p for p in plan.warnings if p.column != "site"]  # a new site is the point
    if worth_knowing:
        st.warning(common.bullets(worth_knowing))

    st.markdown(
        f"**{plan.n_controls} controls** from site **{md(plan.level)}** "
        + (
            "(known to the model: adapting again refines it)."
            if plan.readapted
            else "(new to the model)."
        )
    )
    for col, counts in plan.counts.items():
        st.dataframe(
            pd.DataFrame(
                {
                    col: [common.level_name(col, lv, key) for lv in counts],
                    "controls": list(counts.values()),
                }
            ),
            hide_index=True,
            key=f"adapt_counts_{col}",
        )
    warnings = adaptation_warnings(plan.record(steps=0))
    if warnings:
        st.warning(
            f"**Few controls.** Adapting still works, but with fewer than "
            f"{SAFE_CONTROLS_PER_SEX} healthy controls per sex the site's offset is only "
            "roughly estimated and its centiles are less trustworthy. Add controls if you "
            "can.\n" + common.bullets(warnings)
        )
    if plan.shortfall:
        st.error(md(plan.shortfall))
    with st.expander("Advanced options"):
        steps = st.number_input(
            "Learning steps",
            10,
            5000,
            ADAPT_STEPS,
            step=50,
            key="adapt_steps",
            help="Optimiser steps for the site's offset; more fit it more closely.",
        )
    if st.button(
        f"Adapt to site {md(plan.level)}",
        type="primary",
        disabled=plan.shortfall is not None,
        key="adapt_start",
    ):
        st.session_state["adapt_job"] = common.AdaptJob(
            base=model, base_name=name, site=plan.level, controls=mapped, steps=int(steps)
        ).start()
        st.rerun()


if found is not None:
    adapt_section(*found)


# ------------------------------------------------------------------------ upload bundle
st.subheader("Use a saved model")


def load_bundle() -> None:
    """Runs before the rerun, so the sidebar already shows the uploaded model."""
    bundle = st.session_state.get("bundle_upload")
    st.session_state["bundle_error"] = None
    if bundle is None:
        return
    common.claim(bundle)
    try:
        loaded = NormativeModel.from_bytes(bundle.getvalue())
        loaded.check_network()
    except (BundleError, DataError) as err:
        st.session_state["bundle_error"] = f"'{bundle.name}' is not a usable normcore model: {err}"
        return
    key = "upload:" + common.bytes_key(bundle.getvalue())
    common.add_session_model("uploaded", loaded, key, f"Uploaded bundle ({bundle.name})")


st.file_uploader(
    "Model bundle (.normcore)", type=["normcore"], key="bundle_upload", on_change=load_bundle
)
if st.session_state.get("bundle_error"):
    st.error(md(st.session_state["bundle_error"]))

# ------------------------------------------------------------------------------ train
st.subheader("Train a model on the uploaded table")
job: common.TrainingJob | None = st.session_state.get("train_job")
table = st.session_state.get("table")
if table is None and job is None:
    st.info("Upload a reference table of healthy people on the Data page first.")
    st.stop()

if job is None or job.done:
    mapping = common.mapping_for(found[0] if found else None)
    used = [mapping.id, mapping.age, mapping.sex, mapping.site, *mapping.covariates.values()]
    candidates, left_out = training_idp_candidates(table, used)
    # The user's choice survives training and page switches: kept outside the widget (whose
    # state Streamlit drops when the page is left) and restored, limited to what is offered.
    chosen = st.session_state.get("train_idps", st.session_state.get("train_idps_chosen"))
    st.session_state["train_idps"] = (
        [c for c in chosen if c in candidates] if chosen is not None else candidates
    )
    idps = st.multiselect("Brain measures to model", candidates, key="train_idps")
    st.session_state["train_idps_chosen"] = list(idps)
    if left_out:
        with st.expander(f"{len(left_out)} numeric column(s) not offered as brain measures"):
            st.markdown(common.bullets([f"{c}: {why}" for c, why in left_out.items()]))
    c1, c2, c3 = st.columns(3)
    with c1:
        backbone = st.selectbox(
            "Network",
            BACKBONES,
            key="train_backbone",
            help=(
                "film: a fast MLP, the default. saint: attention across IDPs; its "
                "conditional centiles and imputed bands are closer to the truth, for 4 "
                "times the training time at 20 IDPs and far more beyond (README, "
                "'What it costs')."
            ),
        )
    with c2:
        epochs = st.number_input("Maximum epochs", 5, 5000, 300, step=50, key="train_epochs")
    with c3:
        holdout = st.slider(
            "Hold out for calibration",
            0.0,
            0.4,
            0.2,
            0.05,
            key="train_holdout",
            help="Share of rows kept aside to check calibration after training.",
        )
    with st.expander("Advanced options"):
        a1, a2, a3 = st.columns(3)
        with a1:
            max_minutes = st.number_input(
                "Time budget (minutes)", 0.5, 240.0, 10.0, key="train_minutes"
            )
            seed = st.number_input("Seed", 0, 10_000, 0, key="train_seed")
        with a2:
            reference = st.number_input(
                "Reference samples per sex/site",
                300,
                50_000,
                5000,
                step=500,
                key="train_reference",
                help="More samples: smoother centiles, slower to build.",
            )
            steps = st.number_input("Sampling steps", 10, 200, 50, step=10, key="train_steps")
        with a3:
            width = st.selectbox("Network width", ["default", 32, 64, 128, 256], key="train_width")
            depth = st.selectbox("Network depth", ["default", 1, 2, 3, 4, 6], key="train_depth")
            prior = st.checkbox(
                "Gaussian prior",
                key="train_prior",
                help="The network corrects an age-dependent Gaussian: conditional centiles "
                "about half a copula's error, but a longer fit, and at many IDPs a "
                "multivariate deviation that needs checking (README, 'Conditional centiles').",
            )
    ready = bool(idps)
    if not idps:
        st.warning("Choose at least one IDP (brain measure) to model.")
    else:
        try:
            schema = training_schema(table, mapping, idps)
        except DataError as err:
            common.show_problems(err)
            ready = False
    if ready:
        report = validate_training(table, schema)
        if report.errors:
            st.error("Fix these before training:\n" + common.bullets(report.errors))
            ready = False
        if report.warnings:
            st.warning(common.bullets(report.warnings))
    if st.button("Train", type="primary", disabled=not ready, key="train_start"):
        train_rows, held_rows = holdout_rows(table, holdout, mapping.site, int(seed))
        train_df = table.iloc[train_rows].reset_index(drop=True)
        held = table.iloc[held_rows].reset_index(drop=True) if len(held_rows) else None
        settings = dict(
            backbone=backbone,
            max_epochs=int(epochs),
            seed=int(seed),
            max_seconds=float(max_minutes) * 60,
            reference_samples=int(reference),
            sampling_steps=int(steps),
            network={k: int(v) for k, v in (("width", width), ("depth", depth)) if v != "default"},
            gaussian_prior=bool(prior),
        )
        st.session_state["train_job"] = common.TrainingJob(
            train_df,
            schema,
            settings,
            held,
            table_key=st.session_state.get("table_key"),
            held_rows=held_rows,
            n_rows=len(table),
        ).start()
        st.rerun()


@st.fragment(run_every=1.0)
def training_status() -> None:
    """Poll the background fit: progress, ETA, live loss curve, stop button."""
    job: common.TrainingJob = st.session_state["train_job"]
    status = job.status
    if job.done:
        if job.error:
            st.error(job.error)
        elif job.model is not None and st.session_state.get("train_collected") is not job:
            # The key names this model in caches shared by every session (st.cache_data):
            # a random one, since id(job) is reused once a finished session's job is freed
            # and would then serve one user another's centiles.
            key = f"trained:{uuid.uuid4().hex}"
            common.add_session_model("trained", job.model, key, "Trained this session")
            st.session_state.setdefault("held_out", {})[key] = common.HeldOut(
                job.table_key, job.held_rows, job.n_rows
            )
            st.session_state.setdefault("trained_on", {})[id(job.model)] = job.table_key
            st.session_state.setdefault("reference_tables", {})[key] = job.table
            if job.calibration is not None:
                st.session_state.setdefault("calibration", {})[key] = job.calibration
            st.session_state["train_collected"] = job
            st.rerun(scope="app")
        else:
            st.success(
                f"Training finished in {job.finished - job.started:.0f} s; the new model is active."
            )
        return
    fraction = float(status.get("fraction") or 0.0)
    text = common.training_progress_text(job)
    st.progress(min(max(fraction, 0.0), 1.0), text=text)
    if job.history:
        st.plotly_chart(
            loss_curve(job.history, height=260, kept=kept_weights(job.history)),
            width="stretch",
            key="live_loss",
        )
    if st.button("Stop training", key="train_stop", disabled=job.stop.is_set()):
        job.stop.set()
        st.toast("Stopping after this epoch; the model keeps its best weights so far.")


if st.session_state.get("train_job") is not None:
    training_status()
