"""normcore dashboard: normative centile charts, cohort scoring, individual profiles, teaching.

Run with `make run` (or `streamlit run app.py`). The pages live in pages/; this file only
declares the navigation and the sidebar that every page shares.
"""

from pathlib import Path

import streamlit as st

from pages.common import declare_navigation, sidebar, warm_up

# A local icon: a material-symbol icon would make the browser fetch it from Google's fonts.
ICON = str(Path(__file__).resolve().parent / "assets" / "icon.png")
st.set_page_config(page_title="normcore", page_icon=ICON, layout="wide")

PAGES = {
    "Explore": [
        st.Page("pages/fans.py", title="Centile fans", icon=":material/show_chart:", default=True),
        st.Page("pages/dependence.py", title="Dependence", icon=":material/scatter_plot:"),
        st.Page("pages/diagnostics.py", title="Diagnostics", icon=":material/fact_check:"),
    ],
    "People": [
        st.Page("pages/individual.py", title="Individual", icon=":material/person:"),
        st.Page("pages/cohort.py", title="Cohort", icon=":material/groups:"),
    ],
    "Set up": [
        st.Page("pages/data.py", title="Data", icon=":material/upload_file:"),
        st.Page("pages/model.py", title="Model", icon=":material/model_training:"),
    ],
    "Learn": [
        st.Page("pages/teach.py", title="Teach", icon=":material/school:"),
    ],
}

navigation = st.navigation(PAGES)
declare_navigation()
sidebar()
navigation.run()
# After the page: its chart is sent before the demo's slower results start computing.
warm_up()
