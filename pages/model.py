"""Model: train on the uploaded reference table, download or upload a bundle, read the card."""

import uuid

import pandas as pd
import streamlit as st

from normcore import BundleError, DataError, NormativeModel
from normcore.data import split_table
from normcore.explore import model_card, training_schema
from normcore.figures.charts import loss_curve
from normcore.schema import numeric_columns, validate_training
from pages import common

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
            st.markdown(f"**Calibration on {len(group.table)} {group.source}**")
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
        if model.history_:
            st.plotly_chart(
                loss_curve(model.history_, height=240), width="stretch", key="card_loss"
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

# ------------------------------------------------------------------------ upload bundle
st.subheader("Use a saved model")


def load_bundle() -> None:
    """Runs before the rerun, so the sidebar already shows the uploaded model."""
    bundle = st.session_state.get("bundle_upload")
    st.session_state["bundle_error"] = None
    if bundle is None:
        return
    try:
        loaded = NormativeModel.from_bytes(bundle.getvalue())
    except (BundleError, DataError) as err:
        st.session_state["bundle_error"] = f"'{bundle.name}' is not a usable normcore model: {err}"
        return
    key = "upload:" + common.bytes_key(bundle.getvalue())
    common.add_session_model("uploaded", loaded, key, f"Uploaded bundle ({bundle.name})")


st.file_uploader(
    "Model bundle (.normcore)", type=["normcore"], key="bundle_upload", on_change=load_bundle
)
if st.session_state.get("bundle_error"):
    st.error(st.session_state["bundle_error"])

# ------------------------------------------------------------------------------ train
st.subheader("Train a model on the uploaded table")
job: common.TrainingJob | None = st.session_state.get("train_job")
table = st.session_state.get("table")
if table is None and job is None:
    st.info("Upload a reference table of healthy people on the Data page first.")
    st.stop()

if job is None or job.done:
    mapping = common.mapping_for(found[0] if found else None)
    used = {mapping.id, mapping.age, mapping.sex, mapping.site, *mapping.covariates.values()}
    candidates = [c for c in numeric_columns(table) if c not in used]
    idps = st.multiselect(
        "Brain measures to model", candidates, default=candidates, key="train_idps"
    )
    c1, c2, c3 = st.columns(3)
    with c1:
        backbone = st.selectbox(
            "Network",
            ["film", "saint"],
            key="train_backbone",
            help="film: a fast MLP; saint: attention across IDPs (slower).",
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
    ready = True
    try:
        schema = training_schema(table, mapping, idps)
    except DataError as err:
        common.show_problems(err)
        ready = False
    if ready:
        report = validate_training(table, schema)
        if report.errors:
            st.error("Fix these before training:\n" + "\n".join(f"- {p}" for p in report.errors))
            ready = False
        if report.warnings:
            st.warning("\n".join(f"- {p}" for p in report.warnings))
    if st.button("Train", type="primary", disabled=not ready, key="train_start"):
        train_df, held = (
            split_table(table, holdout, mapping.site, int(seed)) if holdout > 0 else (table, None)
        )
        settings = dict(
            backbone=backbone,
            max_epochs=int(epochs),
            seed=int(seed),
            max_seconds=float(max_minutes) * 60,
            reference_samples=int(reference),
            sampling_steps=int(steps),
            network={k: int(v) for k, v in (("width", width), ("depth", depth)) if v != "default"},
        )
        st.session_state["train_job"] = common.TrainingJob(train_df, schema, settings, held).start()
        st.rerun()
    # Adapting an existing model to a new site will live here (a later issue).


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
            if job.calibration is not None:
                st.session_state.setdefault("calibration", {})[key] = job.calibration
            st.session_state["train_collected"] = job
            st.rerun(scope="app")
        else:
            st.success(
                f"Training finished in {job.finished - job.started:.0f} s; the new model is active."
            )
        return
    phase = status.get("phase", "starting")
    fraction = float(status.get("fraction") or 0.0)
    if phase == "train":
        eta = status.get("eta_seconds")
        text = (
            f"Training: epoch {status.get('epoch')} of {status.get('max_epochs')}, "
            f"loss {status.get('loss', float('nan')):.3f}"
            + (f", about {eta:.0f} s left" if eta is not None else "")
        )
    elif phase == "reference":
        text = "Building the centile table from model samples ..."
    else:
        text = "Starting ..." if phase == "starting" else "Checking calibration ..."
    st.progress(min(max(fraction, 0.0), 1.0), text=text)
    if job.history:
        st.plotly_chart(loss_curve(job.history, height=260), width="stretch", key="live_loss")
    if st.button("Stop training", key="train_stop", disabled=job.stop.is_set()):
        job.stop.set()
        st.toast("Stopping after this epoch; the model keeps its best weights so far.")


if st.session_state.get("train_job") is not None:
    training_status()
