"""Diagnostics: is the active model calibrated on people it has not seen?"""

import streamlit as st

from normcore.figures import diagnostics as fig
from normcore.idp_groups import default_idps
from normcore.report import report_html
from pages import common
from pages.common import md

common.run_through_app()

model, key, name = common.require_model()

st.header("Diagnostics")
group, err = common.cohort(model, key)
common.stop_if_abandoned(err)
if err is not None:
    st.error("The uploaded table cannot be evaluated with the active model yet.")
    common.show_problems(err)
    st.stop()
if group is None:
    st.info(
        "Upload a table of healthy people the model has not seen (Data page) to check "
        "its calibration."
    )
    st.stop()
common.say_cohort_source(group)
include_training = st.toggle(
    "Include the people the model trained on (flatters it)",
    value=False,
    key="diag_include_training",
    help="A model trained here on the uploaded table is judged on its held-out rows only.",
)
people, people_key, who = common.diagnostics_people(key, group, include_training)
if len(people) == 0:
    st.warning(
        "Every person of the uploaded table was used to train this model, so none is left "
        "to judge it on. Upload healthy people it has not seen, or train with a share held "
        "out for calibration."
    )
    st.stop()


@st.cache_data(show_spinner=False, max_entries=2)
def shared_report(
    _result, model_key: str, table_key: str, model_name: str, data_name: str
) -> bytes:
    """The demo's evaluation report, made once for every session."""
    return report_html(_result, model_name=model_name, data_name=data_name).encode()


def report(result, model_key: str, table_key: str, model_name: str, data_name: str) -> bytes:
    """Made when the button is clicked, outside the page's run, where only the shared cache
    can be read: another model's or table's report is made afresh."""
    if common.shared(model_key, table_key):
        return shared_report(result, model_key, table_key, model_name, data_name)
    return report_html(result, model_name=model_name, data_name=data_name).encode()


result = common.evaluation(model, key, people, people_key)
m = result.metrics
st.markdown(
    f"**Evaluated on {md(who)}**; {m['n_idps']} IDPs: the same numbers as `normcore evaluate`."
)
cov95 = m.get("coverage95_error")
k1, k2, k3, k4 = st.columns(4)
k1.metric(
    "ACE",
    f"{m['ace']:.3f}",
    help="Mean |empirical - nominal| centile error over age bins, "
    "IDPs and quantiles (0 = perfect).",
)
k2.metric(
    "95% interval coverage error",
    "-" if cov95 is None else f"{cov95:+.3f}",
    help="Below 0: the 95% band holds fewer than 95% of new people.",
)
k3.metric(
    "Mean PIT KS", f"{m['pit_ks']['mean']:.3f}", help=f"Worst IDP: {m['pit_ks']['worst_idp']}"
)
mis = m["strata"]
k4.metric("Miscalibrated strata", f"{mis['n_miscalibrated']} of {mis['n_evaluated']}")

st.download_button(
    "Download the HTML report",
    data=lambda: report(result, key, people_key, name, who),
    on_click="ignore",
    file_name="normcore_evaluation.html",
    mime="text/html",
    key="diag_report",
    type="primary",
)

show = default_idps(result.idps, 3)


def narrow(figure):
    """Legends below the plot: in half-width columns a legend on top covers the title."""
    return figure.update_layout(
        legend={"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.0},
        margin={"b": 130},
        height=(figure.layout.height or 380) + 60,
    )


calib, strata_tab, dep_tab = st.tabs(
    ["Calibration", "Per site and sex", "Dependence and memorisation"]
)
with calib:
    c1, c2 = st.columns(2)
    c1.plotly_chart(
        narrow(fig.pit_histogram(result.pit[result.idps], show=show)), width="stretch", key="d_pit"
    )
    c2.plotly_chart(
        narrow(fig.pit_qq(result.pit[result.idps], show=show)), width="stretch", key="d_qq"
    )
    c3, c4 = st.columns(2)
    c3.plotly_chart(narrow(fig.coverage_curve(result.coverage)), width="stretch", key="d_cov")
    c4.plotly_chart(narrow(fig.ace_by_age(result.ace)), width="stretch", key="d_ace")
    st.plotly_chart(fig.ks_per_idp(result.ks_idp), width="stretch", key="d_ks")
    st.caption("KS per age bin (real vs model samples):")
    st.dataframe(result.ks_age, hide_index=True, width="stretch", height=240)
with strata_tab:
    cats = [c for c in ("site", "sex") if c in result.covariates]
    if len(cats) == 2:
        st.plotly_chart(
            fig.strata_heatmap(result.strata, rows="site", columns="sex"),
            width="stretch",
            key="d_strata",
        )
    st.dataframe(result.strata, hide_index=True, width="stretch", height=320)
with dep_tab:
    if len(result.idps) > 1:
        st.plotly_chart(fig.correlation_scatter(result.correlations), width="stretch", key="d_corr")
    st.plotly_chart(fig.deviation_histogram(result.deviation), width="stretch", key="d_dev")
    if result.memorisation_r is not None:
        st.plotly_chart(
            fig.memorisation_histogram(result.memorisation_r), width="stretch", key="d_mem"
        )
    else:
        st.caption(
            "Memorisation (are model samples copies of training people?) needs the model's "
            "training table, which this page does not have."
        )
if group.demo:
    st.caption(common.FCON_CITATION)
