"""Shared dashboard plumbing: the active model, uploads and their column mapper, caches,
and background jobs (training, site adaptation).

Pages import from here so that every page agrees on the active model and on the cohort
table. No numerics: models compute, `normcore.explore` summarises, this file caches and
keeps state. Uploaded bytes stay in memory (session state); nothing is written to disk.
"""

from __future__ import annotations

import hashlib
import os
import re
import runpy
import threading
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.runtime.uploaded_file_manager import UploadedFile

from normcore import BundleError, DataError, NormativeModel, read_table
from normcore.evaluate import evaluate
from normcore.explore import (
    UNKNOWN_LEVEL,
    ColumnMapping,
    age_slider_range,
    apply_mapping,
    calibration_summary,
    category_counts,
    conventional_sex_coding,
    describe_counts,
    fan_grid,
    guess_mapping,
    level_text,
    model_card,
    reference_ages,
    seconds_left,
    sex_level_meanings,
    sparse_age_spans,
)
from normcore.figures.charts import FAN_QUANTILES, fan_small_multiples
from normcore.freesurfer import is_freesurfer, read_freesurfer
from normcore.idp_groups import default_idps

ROOT = Path(__file__).resolve().parents[1]

# Every ASCII punctuation character CommonMark lets a backslash escape, plus line breaks.
_MARKDOWN_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")
# What GitHub-flavoured markdown turns into a link even in plain text (its autolink
# literals: www., http://, https://, mailto:, xmpp: and e-mail addresses), found after
# backslash escapes are resolved, so escaping alone does not stop them.
_AUTOLINK_START = re.compile(r"(?i)(https?|ftp|mailto|xmpp|www)(?=[:.])")
_ZERO_WIDTH_SPACE = "\u200b"


def md(text: object) -> str:
    """A user's text (an id, a site, a file or column name, a message quoting them) made
    safe to put inside st.markdown, st.warning and the like: every markdown character
    escaped, line breaks made spaces, and a zero-width space after each autolink's
    start (`http`, `www`) and before each `@`. Without it a site named `![x](http://evil/t.png)`
    renders as an image the browser fetches from outside, and a link renders live."""
    flat = " ".join(str(text).splitlines())
    flat = _AUTOLINK_START.sub(r"\1" + _ZERO_WIDTH_SPACE, flat)
    flat = flat.replace("@", _ZERO_WIDTH_SPACE + "@")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", flat)


def demo_dir() -> Path:
    """Where the demo bundle lives; NORMCORE_DEMO_DIR overrides it (the tests use a tiny one)."""
    return Path(os.environ.get("NORMCORE_DEMO_DIR") or ROOT / "assets" / "demo")


CHOICES = {
    "demo": "Demo model (fcon1000)",
    "uploaded": "Uploaded bundle",
    "trained": "Trained this session",
    "adapted": "Adapted this session",
}

FCON_CITATION = (
    "Demo data: 1000 Functional Connectomes Project (Biswal et al. 2010, *PNAS* 107:4734), "
    "FreeSurfer measures from PCNtoolkit-demo (Zenodo "
    "[10.5281/zenodo.5592153](https://doi.org/10.5281/zenodo.5592153)). "
    "Non-commercial research use."
)


# ----------------------------------------------------------------------------- models


@st.cache_resource(show_spinner="Loading the demo model ...")
def _load_demo(path: str) -> tuple[NormativeModel, str] | str | None:
    """The bundled demo model, shared read-only by every session.

    None when it is not built; the reason as text when the file cannot be used (e.g. a
    bundle from an older normcore), so the sidebar can say so instead of failing.
    """
    file = Path(path)
    if not file.exists():
        return None
    data = file.read_bytes()
    try:
        model = NormativeModel.from_bytes(data)
    except BundleError as err:
        return f"The demo model ({file.name}) cannot be loaded: {err} Rebuild it with `make demo`."
    return model, "demo:" + hashlib.sha256(data).hexdigest()[:16]


def load_demo() -> tuple[NormativeModel, str] | None:
    found = _load_demo(str(demo_dir() / "fcon1000.normcore"))
    return found if isinstance(found, tuple) else None


def demo_problem() -> str | None:
    """Why the demo bundle is unusable, if it exists but cannot be loaded."""
    found = _load_demo(str(demo_dir() / "fcon1000.normcore"))
    return found if isinstance(found, str) else None


@st.cache_data(show_spinner=False)
def _load_demo_test(path: str) -> pd.DataFrame | None:
    return read_table(path) if Path(path).exists() else None


def load_demo_test() -> pd.DataFrame | None:
    """Held-out fcon1000 people (never seen by the demo model), for points and scoring."""
    return _load_demo_test(str(demo_dir() / "fcon1000_test.csv"))


def load_demo_train() -> pd.DataFrame | None:
    """The people the demo model was trained on (their ages draw the fans' rug)."""
    return _load_demo_test(str(demo_dir() / "fcon1000_train.csv"))


def reference_people(model_key: str) -> pd.DataFrame | None:
    """The table a model was trained on, where this session has it: the demo's training
    half, or the rows a model trained here learned from. None for an uploaded bundle."""
    if is_demo(model_key):
        return load_demo_train()
    return st.session_state.get("reference_tables", {}).get(model_key)


def fan_context(
    model: NormativeModel, model_key: str, fixed: dict[str, str]
) -> dict[str, Any]:
    """The fan builders' shading and rug arguments for the chosen sex and site: the
    adapted site's controls' ages, the reference people's ages, and where they are few."""
    out: dict[str, Any] = {}
    site = fixed.get("site")
    for record in model.adaptations:
        if str(record.get("level")) == site and record.get("age_range"):
            out["site_age_range"] = record["age_range"]
    people = reference_people(model_key)
    if people is not None and model.schema.age in people.columns:
        ages = reference_ages(people, model.schema.age, fixed)
        out["reference_ages"] = ages
        out["sparse_spans"] = sparse_age_spans(ages, model.age_range)
    return out


def session_models() -> dict[str, tuple[NormativeModel, str, str]]:
    """Models that belong to this session only: choice -> (model, key, description)."""
    return st.session_state.setdefault("models", {})


def add_session_model(choice: str, model: NormativeModel, key: str, description: str) -> None:
    session_models()[choice] = (model, key, description)
    st.session_state["model_choice"] = choice


def available_choices() -> list[str]:
    found = ["demo"] if load_demo() is not None else []
    return found + [c for c in ("uploaded", "trained", "adapted") if c in session_models()]


def active_model() -> tuple[NormativeModel, str, str] | None:
    """(model, cache key, description) of the model chosen in the sidebar, or None."""
    choices = available_choices()
    if not choices:
        return None
    choice = st.session_state.get("model_choice")
    if choice not in choices:
        choice = choices[0]
        st.session_state["model_choice"] = choice
    if choice == "demo":
        model, key = load_demo()
        return model, key, CHOICES["demo"]
    return session_models()[choice]


def is_demo(key: str) -> bool:
    return key.startswith("demo:")


def require_model() -> tuple[NormativeModel, str, str]:
    """The active model, or stop the page with a hint on how to get one."""
    found = active_model()
    if found is None:
        st.info(
            "No model yet. Build the demo model with `make demo`, upload a model bundle or "
            "train one on the **Model** page."
        )
        st.stop()
    return found


def bytes_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _choose_model() -> None:
    """Radio callback: the user's pick becomes the session's active model."""
    st.session_state["model_choice"] = st.session_state["model_radio"]


_APP = Path(__file__).resolve().parents[1] / "app.py"
_navigation_declared = False


def declare_navigation() -> None:
    """Called by app.py on every run, after `st.navigation`: pages may now run."""
    global _navigation_declared
    _navigation_declared = True


def run_through_app() -> None:
    """Run app.py instead if Streamlit started this page on its own; every page calls it.

    Why: on a server that has not yet run app.py, a request naming a page (a bookmarked
    `/data`) is served by Streamlit's older pages/-folder mode, which runs the page alone:
    no sidebar, no model switch, and a navigation listing every file in pages/. Running
    app.py declares the real navigation, which renders the requested page; this run stops.
    """
    if not _navigation_declared:
        runpy.run_path(str(_APP), run_name="__main__")
        st.stop()


def sidebar() -> None:
    """The active model at a glance and the switch between demo, uploaded and trained."""
    with st.sidebar:
        st.title("normcore")
        st.caption("Normative charts of brain-imaging measures")
        if demo_problem():
            st.error(demo_problem())
        choices = available_choices()
        if not choices:
            st.warning("No model loaded.")
            return
        if st.session_state.get("model_choice") not in choices:
            st.session_state["model_choice"] = choices[0]
        # The radio keeps its own key and mirrors "model_choice": pages switch the model
        # by setting "model_choice" (after training or adapting), which Streamlit forbids
        # for the key of a widget already drawn in the same run.
        st.session_state["model_radio"] = st.session_state["model_choice"]
        st.radio(
            "Active model",
            choices,
            format_func=CHOICES.__getitem__,
            key="model_radio",
            on_change=_choose_model,
        )
        model, _, _ = active_model()
        card = model_card(model)
        st.markdown(
            f"**{card['training people']}** training people · **{card['IDPs']}** IDPs  \n"
            f"ages {md(card['age range'])} · sites: {card['sites']}  \n"
            f"adapted sites: {md(card['adapted sites'])}"
        )
        table = st.session_state.get("table")
        if table is not None:
            st.caption(
                f"Uploaded table: {md(st.session_state.get('table_name'))} ({len(table)} rows)"
            )


# ----------------------------------------------------------------------- cached numbers

DEMO_TABLE_KEY = "demo-test"
"""The cache key of the demo's held-out people (`cohort` when nothing was uploaded)."""


def shared(model_key: str, table_key: str | None = None) -> bool:
    """Whether a result may be cached for every session: only the demo model's numbers
    over grids or the demo's own people, which every visitor asks for alike.

    Why: anything computed from one session's upload or one session's model stays in that
    session's cache (Streamlit's session scope), which is dropped when the session ends;
    in the process-wide cache it would hold the server's memory after the person left.
    """
    return is_demo(model_key) and table_key in (None, DEMO_TABLE_KEY)


def two_scopes(
    func: Any, spinner: str | bool = False, shared_entries: int = 16, own_entries: int = 4
) -> tuple[Any, Any]:
    """`func` cached twice: for every session (bounded) and per session (dropped with it).
    `cached(pair, model_key, table_key)` picks the one a call belongs in."""
    return (
        st.cache_data(func, show_spinner=spinner, max_entries=shared_entries),
        st.cache_data(func, show_spinner=spinner, max_entries=own_entries, scope="session"),
    )


def cached(pair: tuple[Any, Any], model_key: str, table_key: str | None = None) -> Any:
    """The cache of `two_scopes` a result of (model, table) belongs in (see `shared`)."""
    return pair[0] if shared(model_key, table_key) else pair[1]


def _centiles(
    _model: NormativeModel, model_key: str, grid: pd.DataFrame, quantiles: tuple[float, ...]
) -> pd.DataFrame:
    return _model.centiles(grid, quantiles)


def _score(
    _model: NormativeModel, model_key: str, _table: pd.DataFrame, table_key: str
) -> pd.DataFrame:
    return _model.score(_table)


def _deviation(
    _model: NormativeModel, model_key: str, _table: pd.DataFrame, table_key: str
) -> pd.DataFrame:
    return _model.deviation(_table)


def _sample(
    _model: NormativeModel, model_key: str, covariates: pd.DataFrame, n: int, seed: int
) -> pd.DataFrame:
    return _model.sample(covariates, n, seed=seed)


def _calibration(
    _model: NormativeModel, model_key: str, _table: pd.DataFrame, table_key: str
) -> pd.DataFrame:
    return calibration_summary(score(_model, model_key, _table, table_key))


_CENTILES = two_scopes(_centiles, shared_entries=64, own_entries=16)
_SCORE = two_scopes(_score, "Scoring ...", shared_entries=4, own_entries=4)
_DEVIATION = two_scopes(_deviation, "Computing deviation centiles ...", 4, 4)
_SAMPLE = two_scopes(_sample, "Drawing model samples ...", shared_entries=32, own_entries=8)
_CALIBRATION = two_scopes(_calibration, "Checking calibration on held-out people ...", 4, 2)


def centiles(
    model: NormativeModel,
    model_key: str,
    grid: pd.DataFrame,
    quantiles: tuple[float, ...] = FAN_QUANTILES,
    table_key: str | None = None,
) -> pd.DataFrame:
    """Model centiles over a covariate grid (a table lookup: fast, still worth caching).
    `table_key` names the table the grid's rows come from, None for a grid of the
    model's own ages and levels (see `shared`)."""
    return cached(_CENTILES, model_key, table_key)(model, model_key, grid, quantiles)


def score(
    model: NormativeModel, model_key: str, table: pd.DataFrame, table_key: str
) -> pd.DataFrame:
    return cached(_SCORE, model_key, table_key)(model, model_key, table, table_key)


def deviation(
    model: NormativeModel, model_key: str, table: pd.DataFrame, table_key: str
) -> pd.DataFrame:
    return cached(_DEVIATION, model_key, table_key)(model, model_key, table, table_key)


def sample(
    model: NormativeModel,
    model_key: str,
    covariates: pd.DataFrame,
    n: int,
    seed: int = 0,
    table_key: str | None = None,
) -> pd.DataFrame:
    """`n` model draws per row of `covariates` (`table_key` as for `centiles`)."""
    return cached(_SAMPLE, model_key, table_key)(model, model_key, covariates, n, seed)


def calibration(
    model: NormativeModel, model_key: str, table: pd.DataFrame, table_key: str
) -> pd.DataFrame:
    return cached(_CALIBRATION, model_key, table_key)(model, model_key, table, table_key)


# --------------------------------------------------------------------- uploaded tables


#: Each upload slot's file-uploader key. The cohort/reference table lives under "table"
#: (Data page), the covariates of a FreeSurfer upload under "covariates" (Data page), a new
#: site's healthy controls under "controls" (Model page).
UPLOADERS = {"table": "data_upload", "covariates": "covariates_upload", "controls": "adapt_upload"}
#: What the table uploaders accept: tables, and FreeSurfer's zipped stats folders and files.
FREESURFER_TYPES = ["zip", "stats"]


def mapping_key(slot: str) -> str:
    """Where a slot's column mapping is kept in session state."""
    return "mapping" if slot == "table" else f"{slot}_mapping"


def read_upload(slot: str = "table") -> None:
    """Upload callback: read the file into session state (memory only) or say why not.

    Stores `slot`, `<slot>_key`, `<slot>_name` and `<slot>_error`. A callback runs before
    the page's rerun, so the sidebar already shows the new table. FreeSurfer outputs (a zip
    of subjects' stats folders, a .stats file, an *stats2table table) are read by
    `normcore.freesurfer.read_freesurfer`, one row per subject, marked in `attrs`.
    """
    uploaded = st.session_state.get(UPLOADERS[slot])
    if uploaded is None:
        return
    claim(uploaded)
    data = uploaded.getvalue()
    st.session_state.pop(mapping_key(slot), None)
    try:
        if is_freesurfer(uploaded.name, data[:4096]):
            df = read_freesurfer(data, name=uploaded.name)
            df.attrs["freesurfer"] = True
        else:
            df = read_table(data, name=uploaded.name)
    except DataError as err:
        for k in (slot, f"{slot}_key", f"{slot}_name"):
            st.session_state.pop(k, None)
        st.session_state[f"{slot}_error"] = str(err)
        return
    st.session_state.update(
        {
            slot: df,
            f"{slot}_name": uploaded.name,
            f"{slot}_key": bytes_key(data),
            f"{slot}_error": None,
        }
    )


def table_uploader(label: str, slot: str, types: list[str]) -> bool:
    """The file uploader of `slot` (its file read into session state by `read_upload`),
    and, if the last file could not be read, why. False when it could not be read."""
    st.file_uploader(label, type=types, key=UPLOADERS[slot], on_change=read_upload, args=(slot,))
    error = st.session_state.get(f"{slot}_error")
    if error:
        st.error(f"This file could not be read. {md(error)}")
    return not error


def claim(uploaded: Any) -> None:
    """Remember that an uploader's callback received this file (see `abandoned_uploads`)."""
    st.session_state.setdefault("claimed_uploads", set()).add(getattr(uploaded, "file_id", None))


def abandoned_uploads() -> list[str]:
    """Names of files that reached this session's upload store but no uploader received:
    the user chose a file and left the page before Streamlit handed it to the page.

    Why: such a file is never read, and the pages would otherwise go on showing the demo
    cohort as if nothing had been uploaded. Read from the session's in-memory upload store
    (nothing is written to disk); a file the user removed with the uploader's x is
    deleted from that store and no longer counts."""
    ctx = get_script_run_ctx()
    storage = getattr(getattr(ctx, "uploaded_file_mgr", None), "file_storage", None)
    if ctx is None or not isinstance(storage, dict):
        return []
    files = storage.get(ctx.session_id) or {}
    claimed = set(st.session_state.get("claimed_uploads", set()))
    for value in st.session_state.to_dict().values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, UploadedFile):
                claimed.add(item.file_id)
    return [rec.name for file_id, rec in list(files.items()) if file_id not in claimed]


class AbandonedUpload(DataError):
    """A chosen file that never arrived: said plainly, never replaced by the demo."""


def sex_meanings(model: NormativeModel, model_key: str) -> dict[str, str]:
    """What the active model's sex levels mean, where known (see explore.sex_level_meanings)."""
    return sex_level_meanings(model.levels.get("sex", []), demo=is_demo(model_key))


def _active_key(model: NormativeModel | None) -> str:
    found = active_model()
    return found[1] if found is not None and found[0] is model else ""


def mapping_for(model: NormativeModel | None, slot: str = "table") -> ColumnMapping | None:
    """The session's column mapping of an uploaded table (guessed on first use).

    Sex codes are pre-filled only where certain: words such as 'F' against levels of
    known meaning, or the codes of a model trained on this very table in this session."""
    table = st.session_state.get(slot)
    if table is None:
        return None
    key = mapping_key(slot)
    schema = model.schema if model is not None else None
    levels = model.levels if model is not None else None
    meanings = sex_meanings(model, _active_key(model)) if model is not None else {}
    same = (
        model is not None
        and st.session_state.get("trained_on", {}).get(id(model))
        == st.session_state.get(f"{slot}_key")
    )
    if key not in st.session_state:
        st.session_state[key] = guess_mapping(table, schema, levels, meanings, same)
    elif schema is not None and st.session_state.get(f"{key}_schema") != schema:
        # Another model became active (e.g. one just trained on this very table): map its
        # IDPs and covariates by name as well, keeping the choices already made, and redo
        # the sex coding, which only means something against a model's own levels.
        mapping = st.session_state[key]
        guessed = guess_mapping(table, schema, levels, meanings, same)
        mapping.idps = {**guessed.idps, **mapping.idps}
        mapping.covariates = {**guessed.covariates, **mapping.covariates}
        kept = {v: c for v, c in mapping.sex_coding.items() if c in levels.get("sex", [])}
        mapping.sex_coding = {**guessed.sex_coding, **kept}
    st.session_state[f"{key}_schema"] = schema
    return st.session_state[key]


NONE = "(none)"


def column_mapper(
    table: pd.DataFrame,
    mapping: ColumnMapping,
    model: NormativeModel | None,
    model_key: str,
    prefix: str = "map",
    site_for_everyone: bool = True,
) -> None:
    """Widgets that say which column of `table` is what; they edit `mapping` in place.

    Used for the cohort table (Data page) and a new site's controls (Model page), so both
    are read the same way. Without a model only id, age, sex and site are asked. With
    `site_for_everyone`, a table without a site column picks one of the model's sites
    for all rows; otherwise the caller asks for the site itself.
    """
    columns = [str(c) for c in table.columns]

    def pick(label: str, current: str | None, role: str, help: str | None = None) -> str | None:
        options = [NONE, *columns]
        index = options.index(current) if current in options else 0
        value = st.selectbox(label, options, index=index, key=f"{prefix}_{role}", help=help)
        return None if value == NONE else value

    cols = st.columns(4)
    with cols[0]:
        mapping.id = pick("Person id", mapping.id, "id", "Carried through to the results.")
    with cols[1]:
        mapping.age = pick("Age (years)", mapping.age, "age")
    with cols[2]:
        mapping.sex = pick("Sex", mapping.sex, "sex")
    with cols[3]:
        mapping.site = pick("Site / scanner", mapping.site, "site")
    if model is None:
        return

    schema = model.schema
    levels = model.levels
    if "sex" in schema.categorical and mapping.sex:
        sex_coding_widgets(table, mapping, model, model_key, prefix)
    if "site" in schema.categorical and mapping.site:
        known = set(levels.get("site", []))
        counts = category_counts(table[mapping.site])
        new = {v: n for v, n in counts.items() if v not in known}
        st.markdown(
            f"**Site codes** in column {md(mapping.site)}: {md(describe_counts(counts))}."
            + (
                f" New to the model, scored with its 'unknown site' level: "
                f"{md(', '.join(new))}."
                if new
                else " Every one is a site the model knows."
            )
        )
    if site_for_everyone and "site" in schema.categorical and not mapping.site:
        site_opts = [UNKNOWN_LEVEL, *levels["site"]]
        cur = mapping.site_value if mapping.site_value in site_opts else UNKNOWN_LEVEL
        mapping.site_value = st.selectbox(
            "No site column: score everyone as site",
            site_opts,
            index=site_opts.index(cur),
            key=f"{prefix}_site_value",
            format_func=lambda v: level_name("site", v, model_key),
            help="'any / unknown' uses the model's site-averaged level.",
        )
    for cov in [c for c in schema.categorical if c not in ("sex", "site")]:
        chosen = pick(f"Covariate '{cov}'", mapping.covariates.get(cov), f"cov_{cov}")
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
            key=f"{prefix}_idps",
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


def sex_coding_widgets(
    table: pd.DataFrame, mapping: ColumnMapping, model: NormativeModel, model_key: str, prefix: str
) -> None:
    """Ask what each sex code of the table means, showing how many people hold it.

    Nothing is pre-chosen unless certain (see `mapping_for`): '1' means male in most 1/2
    tables but female in some, and a reversed coding silently swaps every sex-specific
    centile. The usual convention is offered as a button; it applies only when pressed.
    """
    levels = list(model.levels["sex"])
    meanings = sex_meanings(model, model_key)
    counts = category_counts(table[mapping.sex])
    values = list(counts)[:10]
    keys = {v: f"{prefix}_sexcode_{v}" for v in values}
    st.markdown(
        f"**Sex coding** of column {md(mapping.sex)}: {md(describe_counts(counts))}. "
        "Say which of the model's levels each code means; nothing is assumed."
    )
    usual = conventional_sex_coding(values, levels, meanings)
    if usual is not None and any(mapping.sex_coding.get(v) != usual[v] for v in usual):
        if st.button(
            "Use the usual convention: 1 = male, 2 = female (check your data dictionary)",
            key=f"{prefix}_sex_usual",
        ):
            mapping.sex_coding.update(usual)
            for v, level in usual.items():
                st.session_state[keys[v]] = level
    for v, box in zip(values, st.columns(max(len(values), 1))):
        with box:
            st.session_state.setdefault(keys[v], mapping.sex_coding.get(v))
            chosen = st.selectbox(
                f"{md(v)} ({counts[v]} {'person' if counts[v] == 1 else 'people'}) means",
                levels,
                index=None,
                placeholder="choose ...",
                key=keys[v],
                format_func=lambda lv: level_text("sex", lv, meanings),
            )
            if chosen is None:
                mapping.sex_coding.pop(v, None)
            else:
                mapping.sex_coding[v] = chosen
    unsaid = [v for v in values if v not in mapping.sex_coding]
    if unsaid:
        st.warning(
            f"Choose what sex code {md(', '.join(unsaid))} means before scoring: tables code "
            "sex differently, so it is not guessed."
        )


@dataclass
class Cohort:
    """The people a page scores or draws: a model-ready table and where it came from."""

    table: pd.DataFrame
    key: str
    source: str
    demo: bool = False


def cohort(model: NormativeModel, model_key: str) -> tuple[Cohort | None, DataError | None]:
    """The uploaded table mapped to the model, else the demo test set for the demo model,
    which is used only when nothing was uploaded: an upload that never arrived is an
    `AbandonedUpload` error, never silently the demo."""
    table = st.session_state.get("table")
    lost = abandoned_uploads()
    if lost and (table is None or st.session_state.get("table_name") not in lost):
        return None, AbandonedUpload(
            f"Your upload ({', '.join(lost)}) was not finished: the page was left before the "
            "file was read, so it was not scored. Upload it again on the Data page."
        )
    if table is not None:
        mapping = mapping_for(model)
        try:
            mapped = apply_mapping(table, mapping, model.schema)
        except DataError as err:
            return None, err
        key = f"{st.session_state['table_key']}:{hash(repr(mapping))}"
        return Cohort(mapped, key, f"uploaded table '{st.session_state.get('table_name')}'"), None
    demo = load_demo_test()
    if is_demo(model_key) and demo is not None:
        return Cohort(demo, DEMO_TABLE_KEY, DEMO_SOURCE, demo=True), None
    return None, None


DEMO_SOURCE = "demo's held-out fcon1000 people (not used for training)"


@dataclass
class HeldOut:
    """Which rows of an uploaded table a model trained this session never saw."""

    table_key: str
    rows: Any
    n_rows: int


def diagnostics_people(model_key: str, group: Cohort, include_training: bool) -> tuple[
    pd.DataFrame, str, str
]:
    """The people the Diagnostics page evaluates, a cache key, and a sentence saying who.

    A model trained this session on the uploaded table is judged, by default, only on the
    rows held out from its training: its own training people would flatter it."""
    held: HeldOut | None = st.session_state.get("held_out", {}).get(model_key)
    n = len(group.table)
    if group.demo:
        return group.table, group.key, f"{n} {group.source}"
    if held is None or not group.key.startswith(f"{held.table_key}:"):
        return group.table, group.key, (
            f"all {n} people of the {group.source} (the model cannot tell whether any of "
            "them were in its training data)"
        )
    n_held = len(held.rows)
    if include_training:
        return group.table, group.key, (
            f"all {n} people of the {group.source}, including the {n - n_held} it trained "
            "on: these numbers flatter the model"
        )
    rows = group.table.iloc[list(held.rows)].reset_index(drop=True)
    return rows, f"{group.key}:held", (
        f"the {n_held} held-out people of the {group.source}, of {n}: the {n - n_held} "
        "others trained the model and are left out"
    )


def say_cohort_source(group: Cohort) -> None:
    """Say plainly when a page shows the demo's people rather than an upload."""
    if group.demo:
        st.info(
            "Showing the demo: no table has been uploaded, so this page uses the demo "
            "model's held-out fcon1000 people. Upload your own on the Data page."
        )


def stop_if_abandoned(err: DataError | None) -> None:
    """An upload that never arrived: say so and stop the page (nothing else is shown)."""
    if isinstance(err, AbandonedUpload):
        st.warning(md(str(err)))
        st.stop()


def show_problems(err: DataError) -> None:
    """A DataError in plain words: one line per problem, never a traceback; the text is
    escaped (it quotes the user's column names and cells)."""
    st.error(problems_text(err) if getattr(err, "problems", None) else md(str(err)))


def bullets(items: list) -> str:
    """Escaped markdown bullets, one per item (problems quoting the user's values)."""
    return "\n".join(f"- {md(i)}" for i in items)


# ---------------------------------------------------------------------- background jobs


def problems_text(err: DataError) -> str:
    """A DataError as escaped markdown: its first line, then one bullet per problem."""
    return "\n".join([md(str(err).splitlines()[0]), bullets(err.problems)])


@dataclass(kw_only=True)
class BackgroundJob(ABC):
    """Slow model work running in a thread; the page polls `status` once a second.

    The progress callback only writes to the plain `status` dict (never st.*), because
    Streamlit calls are only valid in the script thread. The result lands in `model`, or
    a message for the user in `error` (markdown, the user's text in it escaped).
    """

    failure: ClassVar[str] = "Failed"
    status: dict = field(default_factory=lambda: {"phase": "starting", "fraction": 0.0})
    model: NormativeModel | None = None
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    phase_started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def start(self) -> BackgroundJob:
        name = f"normcore-{type(self).__name__}"
        threading.Thread(target=self._run, daemon=True, name=name).start()
        return self

    @property
    def done(self) -> bool:
        return self.finished is not None

    def _progress(self, info: dict) -> None:
        self._enter(info)
        self.status = dict(info)

    def _enter(self, info: dict) -> None:
        """Note when a new phase begins: its ETA is read from its own pace."""
        if info.get("phase") != self.status.get("phase"):
            self.phase_started = time.monotonic()

    def phase_seconds_left(self) -> float | None:
        """Seconds the current phase still needs at its pace so far (None: too early)."""
        fraction = float(self.status.get("fraction") or 0.0)
        return seconds_left(time.monotonic() - self.phase_started, fraction)

    @abstractmethod
    def _work(self) -> NormativeModel:
        """The slow part; runs in the thread and returns the finished model."""

    def _run(self) -> None:
        try:
            self.model = self._work()
        except DataError as err:
            self.error = problems_text(err)
        except Exception as err:  # shown to the user in words; the trace goes to the log
            traceback.print_exc()
            self.error = md(f"{self.failure}: {err}")
        finally:
            self.finished = time.monotonic()


@dataclass
class TrainingJob(BackgroundJob):
    """A model fit; the page may set `stop` to end it early with the best weights so far."""

    failure: ClassVar[str] = "Training failed"
    table: pd.DataFrame
    schema: Any
    settings: dict
    holdout: pd.DataFrame | None = None
    table_key: str | None = None
    held_rows: Any = None
    n_rows: int = 0
    history: list = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    calibration: pd.DataFrame | None = None

    def _progress(self, info: dict) -> None:
        self._enter(info)
        self.status = dict(info)
        if info.get("phase") == "train":
            self.history.append({k: info.get(k) for k in ("epoch", "loss", "val_loss")})

    def _work(self) -> NormativeModel:
        model = NormativeModel(**self.settings)
        model.fit(self.table, self.schema, progress=self._progress, should_stop=self.stop.is_set)
        if self.holdout is not None and len(self.holdout):
            self._progress({"phase": "calibration", "fraction": 1.0})
            self.calibration = calibration_summary(model.score(self.holdout))
        return model


def training_progress_text(job: TrainingJob) -> str:
    """What a running training is doing, with the seconds it still needs: the epoch and
    loss while the network trains, the share of the centile table built after."""
    status = job.status
    phase = status.get("phase", "starting")
    if phase == "train":
        eta = status.get("eta_seconds")
        return (
            f"Training: epoch {status.get('epoch')} of {status.get('max_epochs')}, "
            f"loss {status.get('loss', float('nan')):.3f}"
            + (f", about {eta:.0f} s left" if eta is not None else "")
        )
    if phase == "reference":
        left = job.phase_seconds_left()
        fraction = float(status.get("fraction") or 0.0)
        return f"Building the centile table from model samples: {fraction:.0%}" + (
            f", about {left:.0f} s left" if left is not None else " ..."
        )
    return "Starting ..." if phase == "starting" else "Checking calibration ..."


@dataclass
class AdaptJob(BackgroundJob):
    """A copy of `base` adapted to one site from its healthy controls (`base` is untouched)."""

    failure: ClassVar[str] = "Adaptation failed"
    base: NormativeModel
    base_name: str
    site: str
    controls: pd.DataFrame
    steps: int

    def _work(self) -> NormativeModel:
        return self.base.adapt(self.controls, steps=self.steps, progress=self._progress)


# ------------------------------------------------------------------------ shared widgets

def level_name(column: str, level: str, model_key: str) -> str:
    """How a category level reads on screen: words where known ('female (0)' for the
    demo's sex codes), the site's own name, 'any / unknown' for the unknown level."""
    found = active_model()
    meanings = sex_meanings(found[0], model_key) if found is not None else {}
    return level_text(column, level, meanings)


def category_pickers(
    model: NormativeModel, model_key: str, key: str, allow_unknown: bool = True
) -> dict[str, str]:
    """One select box per categorical covariate, side by side; returns column -> level."""
    cats = list(model.schema.categorical)
    if not cats:
        return {}
    chosen = {}
    defaults = default_categories(model, allow_unknown)
    for col, box in zip(cats, st.columns(len(cats))):
        levels = list(model.levels.get(col, []))
        options = levels + ([UNKNOWN_LEVEL] if allow_unknown and col != "sex" else [])
        default = defaults[col]
        with box:
            chosen[col] = st.selectbox(
                col,
                options,
                index=options.index(default),
                key=f"{key}_{col}",
                format_func=lambda v, c=col: level_name(c, v, model_key),
            )
    return chosen


def default_categories(model: NormativeModel, allow_unknown: bool = True) -> dict[str, str]:
    """The level each `category_pickers` box starts at: the first sex, every other
    covariate (site) at its unknown level when allowed, else its first level."""
    out = {}
    for col in model.schema.categorical:
        levels = list(model.levels.get(col, []))
        out[col] = UNKNOWN_LEVEL if col != "sex" and allow_unknown else levels[0]
    return out


# ------------------------------------------------------------------ shared demo results


def _evaluate(
    _model: NormativeModel, model_key: str, _table: pd.DataFrame, table_key: str
) -> Any:
    return evaluate(_model, _table)


_EVALUATION = two_scopes(
    _evaluate, "Evaluating the model (sampling, then all metrics) ...", 2, 2
)


def evaluation(model: NormativeModel, model_key: str, table: pd.DataFrame, table_key: str) -> Any:
    """`normcore.evaluate.evaluate` of a model on a table (the Diagnostics page)."""
    return cached(_EVALUATION, model_key, table_key)(model, model_key, table, table_key)


#: Draws of the Dependence page: at one age, and at each of 9 ages for the correlation by age.
PAIR_DRAWS, AGE_DRAWS, AGES = 1500, 300, 9


def pair_draws(
    model: NormativeModel, model_key: str, age: float, fixed: dict[str, str]
) -> pd.DataFrame:
    """Model draws at one age, sex and site (the Dependence page's contours)."""
    cov = pd.DataFrame({model.schema.age: [age], **{c: [v] for c, v in fixed.items()}})
    return sample(model, model_key, cov, PAIR_DRAWS)


def draws_by_age(
    model: NormativeModel, model_key: str, fixed: dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(grid, draws): `AGE_DRAWS` model draws at each of `AGES` ages over the training range."""
    grid = fan_grid(model.training_summary, model.schema, fixed, n=AGES, margin=0.0)
    return grid, sample(model, model_key, grid, AGE_DRAWS, seed=2)


def draws_like(model: NormativeModel, model_key: str, group: Cohort) -> pd.DataFrame:
    """One model draw at each person's covariates, so both sides of a comparison mix the
    same ages, sexes and sites."""
    covariates = group.table[list(model.schema.covariates)].reset_index(drop=True)
    return sample(model, model_key, covariates, 1, seed=1, table_key=group.key)


def warm_before_opening() -> None:
    """What the demo's first page (Centile fans at its defaults) computes, into the caches
    every session reads, and the demo's network, which every page that draws needs.

    Why: serve.py calls this before the server opens, so the first visitor waits for
    none of it: the fans' centiles and the held-out people's scores; one fan figure,
    built and dropped, because the first one built in a process loads Plotly's trace
    classes; and the denoiser, whose first build imports torch (seconds the Dependence
    page would otherwise spend on a first visit)."""
    found, test = load_demo(), load_demo_test()
    if found is None:
        return
    model, key = found
    fixed = default_categories(model)
    grid = fan_grid(model.training_summary, model.schema, fixed)
    table = centiles(model, key, grid)
    if test is not None:
        score(model, key, test, DEMO_TABLE_KEY)
    fan_small_multiples(
        table, default_idps(model.schema.idps), age=model.schema.age,
        **fan_context(model, key, fixed),
    )  # fmt: skip
    model.check_network()


def warm_up() -> None:
    """Start `warm_demo` for the bundled demo model (once per server)."""
    found = load_demo()
    if found is not None:
        warm_demo(found[1])


#: Seconds between the first page's script ending and the demo warm-up starting: the
#: visitor's browser is still drawing that page's chart, and shares the CPU when it runs
#: on the same machine (benchmarks/RESULTS.md, "Dashboard").
WARM_UP_DELAY = 3.0


@st.cache_resource(show_spinner=False, max_entries=1)
def warm_demo(model_key: str) -> threading.Thread:
    """Compute, once per server and off every page's script path, the demo's results that
    take seconds (Diagnostics' evaluation, Dependence's default draws) into the caches
    every session reads; a page that asks while they run waits for the same result
    instead of computing it again (Streamlit's per-key compute lock).

    Why a thread started `WARM_UP_DELAY` seconds after the first page: the first
    visitor's chart comes first; the next page they open is then often ready."""
    thread = threading.Timer(WARM_UP_DELAY, _warm, args=(model_key,))
    thread.daemon, thread.name = True, "normcore-demo-warm-up"
    thread.start()
    return thread


@st.cache_resource(show_spinner=False, max_entries=1)
def _warm(model_key: str) -> bool:
    """The warm-up's work (cached itself, so the nested cached calls show no spinner in a
    thread that has no page to show it on)."""
    found, test = load_demo(), load_demo_test()
    if found is None or found[1] != model_key:
        return False
    model, _ = found
    fixed = default_categories(model)
    if len(model.schema.idps) > 1:
        pair_draws(model, model_key, age_slider_range(model.age_range)[2], fixed)
    if test is not None:
        group = Cohort(test, DEMO_TABLE_KEY, DEMO_SOURCE, demo=True)
        evaluation(model, model_key, test, DEMO_TABLE_KEY)
        if len(model.schema.idps) > 1:
            draws_like(model, model_key, group)
            draws_by_age(model, model_key, fixed)
    return True
