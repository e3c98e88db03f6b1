"""The tables behind the dashboard's charts: grids, column mappings, summaries, a report.

The dashboard's pages only lay out widgets; whatever they show that needs arithmetic
(which ages to draw a fan over, how an uploaded table's columns become the model's,
how often z is extreme per IDP, how a pair's correlation changes with age) is computed
here, by pure functions that the tests can check without Streamlit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.special import ndtri

from normcore.data import split_table
from normcore.errors import DataError
from normcore.freesurfer import is_qc_column
from normcore.idp_groups import label, region_group
from normcore.preprocessing import UNKNOWN
from normcore.schema import ID_CANDIDATES, Problem, Schema, coerce_categories, numeric_columns

if TYPE_CHECKING:
    from normcore.first_stage import NewPersonSpread
    from normcore.reference import DeviationCalibration

__all__ = [
    "UNKNOWN_LEVEL",
    "ColumnMapping",
    "guess_mapping",
    "guess_sex_coding",
    "sex_word",
    "sex_level_meanings",
    "conventional_sex_coding",
    "describe_counts",
    "level_text",
    "guess_id_column",
    "training_idp_candidates",
    "holdout_rows",
    "join_covariates",
    "sparse_age_spans",
    "reference_ages",
    "kept_weights",
    "apply_mapping",
    "training_schema",
    "fan_grid",
    "fan_points",
    "extreme_rates",
    "z_matrix",
    "person_profile",
    "correlation_pair",
    "real_pair_correlation_by_age",
    "model_pair_correlation_by_age",
    "near_age",
    "pit_matrix",
    "calibration_summary",
    "truth_long",
    "curve_distance",
    "age_slider_range",
    "category_counts",
    "unseen_levels_summary",
    "unseen_levels_message",
    "model_card",
    "provenance_card",
    "adapted_sites",
    "default_given",
    "imputed_columns",
    "imputed_band_z",
    "share_between",
]

#: The value that asks the model for its 'unknown' level (e.g. a fan over all sites).
UNKNOWN_LEVEL = UNKNOWN


@dataclass
class ColumnMapping:
    """Which column of an uploaded table plays which role.

    `sex_coding` maps the table's sex values (as text) to the model's levels; `site_value`
    is used for every row when the table has no site column. `idps` maps each model IDP
    (or, for training, each chosen IDP) to the table's column.
    """

    id: str | None = None
    age: str | None = None
    sex: str | None = None
    sex_coding: dict[str, str] = field(default_factory=dict)
    site: str | None = None
    site_value: str | None = None
    covariates: dict[str, str] = field(default_factory=dict)
    idps: dict[str, str] = field(default_factory=dict)


def _norm(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def _find(columns: Sequence[str], *candidates: str) -> str | None:
    """The first column matching a candidate exactly, else ignoring case and punctuation."""
    for c in candidates:
        if c in columns:
            return c
    normed = {_norm(c): c for c in columns}
    for c in candidates:
        if _norm(c) in normed:
            return normed[_norm(c)]
    return None


#: The demo model's sex codes (fcon1000: 0 = female, 1 = male).
DEMO_SEX_MEANINGS: dict[str, str] = {"0": "female", "1": "male"}
#: The coding most 1/2 tables use (ABCD, NACC, DICOM-derived exports: 1 = male, 2 = female).
#: Offered for the user to confirm, never applied without that.
USUAL_SEX_CONVENTION: dict[str, str] = {"1": "male", "2": "female"}
_SEX_WORDS = {
    "female": ("f", "female", "w", "woman", "girl"),
    "male": ("m", "male", "man", "boy"),
}


def sex_word(value: Any) -> str | None:
    """'female' or 'male' when a sex value is that word (or its usual letter), else None."""
    low = str(value).strip().lower()
    return next((word for word, spellings in _SEX_WORDS.items() if low in spellings), None)


def sex_level_meanings(levels: Sequence[str], demo: bool = False) -> dict[str, str]:
    """What each of a model's sex levels means where that is known, never guessed: levels
    that are words ('F', 'male'), and the demo's documented 0 = female, 1 = male. A level
    coded by a bare number of a model trained elsewhere is left out."""
    meanings = {str(lv): w for lv in levels if (w := sex_word(lv)) is not None}
    if demo:
        meanings.update({lv: m for lv, m in DEMO_SEX_MEANINGS.items() if lv in levels})
    return meanings


def guess_sex_coding(
    values: Sequence[Any],
    levels: Sequence[str],
    meanings: Mapping[str, str] | None = None,
    same_source: bool = False,
) -> dict[str, str]:
    """The table's sex values whose model level is certain, and nothing else.

    Certain means: the value is a word ('F', 'female', 'M') and exactly one model level
    has that meaning (`meanings`, from `sex_level_meanings`); or the model was trained on
    this very column (`same_source`), so its codes are the table's own. A bare code
    (1/2, 0/1) of a table from elsewhere is never mapped here: whether 1 means male
    depends on the table, and a wrong guess reverses every sex-specific centile. The page
    asks for those, showing how many people hold each code.
    """
    vals = sorted({str(v) for v in coerce_categories(pd.Series(list(values))).dropna()})
    levels = [str(v) for v in levels]
    meanings = dict(meanings or {})
    coding: dict[str, str] = {}
    for v in vals:
        if same_source and v in levels:
            coding[v] = v
            continue
        word = sex_word(v)
        matches = [lv for lv in levels if meanings.get(lv) == word]
        if word is not None and len(matches) == 1:
            coding[v] = matches[0]
    return coding


def level_text(column: str, level: Any, sex_meanings: Mapping[str, str]) -> str:
    """A category level in words: 'female (0)' for a sex code of known meaning, the site's
    own name, 'any / unknown' for the model's unknown level."""
    text = str(level)
    if text == UNKNOWN_LEVEL:
        return "any / unknown"
    if column == "sex" and text in sex_meanings:
        return f"{sex_meanings[text]} ({text})"
    return text


def conventional_sex_coding(
    values: Sequence[str], levels: Sequence[str], meanings: Mapping[str, str]
) -> dict[str, str] | None:
    """`USUAL_SEX_CONVENTION` (1 = male, 2 = female) in the model's levels, for a table
    coded 1/2, or None when the table is coded otherwise or the model's levels have no
    known meaning. The page offers it as a button: it is applied only when confirmed."""
    if {str(v) for v in values} != set(USUAL_SEX_CONVENTION):
        return None
    by_meaning = {m: lv for lv, m in meanings.items() if lv in levels}
    if not all(m in by_meaning for m in USUAL_SEX_CONVENTION.values()):
        return None
    return {code: by_meaning[m] for code, m in USUAL_SEX_CONVENTION.items()}


def describe_counts(counts: Mapping[str, int], noun: str = "people") -> str:
    """'1: 230 people, 2: 215 people' (a count of one is 'person')."""
    single = "person" if noun == "people" else noun
    return ", ".join(f"{k}: {n} {single if n == 1 else noun}" for k, n in counts.items())


#: Subject-id column names, in order of preference (exact names first, then ignoring case
#: and punctuation): BIDS' `participant_id`, FreeSurfer tables' `sub_id`, and the usual rest.
ID_COLUMN_NAMES = (*ID_CANDIDATES, "participant", "subject", "Subject")


def guess_id_column(columns: Sequence[str], preferred: str | None = None) -> str | None:
    """The subject-id column of a table: `preferred` (a model's own id name) if present,
    else the first of `ID_COLUMN_NAMES`. One rule for the dashboard's mapper and the
    CLI's `score`, so both carry `participant_id` through to the results."""
    return _find(
        [str(c) for c in columns], *([preferred] if preferred else []), *ID_COLUMN_NAMES
    )


def guess_mapping(
    df: pd.DataFrame,
    schema: Schema | None = None,
    levels: Mapping[str, Sequence[str]] | None = None,
    sex_meanings: Mapping[str, str] | None = None,
    same_source: bool = False,
) -> ColumnMapping:
    """Pre-fill the column mapper: the model's own names first, then common spellings.

    Sex codes are pre-filled only where `guess_sex_coding` is certain (`sex_meanings` and
    `same_source` are passed to it); the rest stay for the user to say."""
    columns = [str(c) for c in df.columns]
    age = _find(columns, schema.age if schema else "age", "age", "age_years", "Age")
    sex = _find(columns, "sex", "gender", "Sex")
    site = _find(columns, "site", "scanner", "centre", "center", "Site")
    id_ = guess_id_column(columns, schema.id if schema else None)
    mapping = ColumnMapping(id=id_, age=age, sex=sex, site=site)
    if schema is not None:
        extra = [c for c in schema.categorical if c not in ("sex", "site")]
        mapping.covariates = {c: m for c in extra if (m := _find(columns, c)) is not None}
        mapping.idps = {i: m for i in schema.idps if (m := _find(columns, i)) is not None}
    if sex is not None and levels and "sex" in levels:
        mapping.sex_coding = guess_sex_coding(
            df[sex].tolist(), levels["sex"], sex_meanings, same_source
        )
    return mapping


def training_schema(df: pd.DataFrame, mapping: ColumnMapping, idps: Sequence[str]) -> Schema:
    """The Schema for training a new model on an uploaded table with this mapping."""
    if mapping.age is None:
        raise DataError("Choose which column holds the age before training.")
    categorical = [c for c in (mapping.sex, mapping.site) if c]
    categorical += [c for c in mapping.covariates.values() if c and c not in categorical]
    return Schema.infer(
        df, age=mapping.age, categorical=categorical, idps=list(idps), id=mapping.id or ""
    )


#: How names of columns that code the scanner or centre begin (site, site_code, ScannerID).
_SITE_PREFIXES = ("site", "scanner", "centre", "center")


def training_idp_candidates(
    df: pd.DataFrame, used: Sequence[str | None]
) -> tuple[list[str], dict[str, str]]:
    """The numeric columns worth offering as IDPs for training, and why the others are not.

    Left out, each with its reason: the columns already given a role (`used`), FreeSurfer
    quality-control columns (Euler numbers, surface holes: they describe the reconstruction,
    see `freesurfer.is_qc_column`), subject-id and site-code columns however numeric, and
    columns holding one value in every row (an all-zero structure FreeSurfer writes for a
    region it did not segment), which carry no information and block training.
    """
    taken = {str(u) for u in used if u}
    ids = {_norm(n) for n in ID_COLUMN_NAMES}
    offered: list[str] = []
    left_out: dict[str, str] = {}
    for col in numeric_columns(df):
        if col in taken:
            continue
        values = pd.to_numeric(df[col], errors="coerce").dropna()
        if is_qc_column(col):
            left_out[col] = "a FreeSurfer quality-control column, not a brain measure"
        elif _norm(col) in ids or _norm(col).startswith(_SITE_PREFIXES):
            left_out[col] = "an id or site code, not a brain measure"
        elif len(df) > 1 and values.nunique() <= 1:
            shown = f"{values.iloc[0]:g}" if len(values) else "empty"
            left_out[col] = f"the same value ({shown}) in every row"
        else:
            offered.append(col)
    return offered, left_out


def holdout_rows(
    df: pd.DataFrame, fraction: float, stratify: str | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """0-based positions of the rows to train on and of those held out, as
    `data.split_table` splits them (stratified by `stratify`, reproducible by `seed`).

    Positions, not copies: the dashboard remembers which uploaded people a model never
    saw, so its diagnostics can use only them."""
    n = len(df)
    if fraction <= 0.0:
        return np.arange(n), np.array([], dtype=int)
    positions = pd.DataFrame({"position": np.arange(n)})
    if stratify is not None and stratify in df.columns:
        positions[stratify] = df[stratify].to_numpy()
    train, held = split_table(positions, fraction, stratify, seed)
    return train["position"].to_numpy(dtype=int), held["position"].to_numpy(dtype=int)


def join_covariates(
    measures: pd.DataFrame, covariates: pd.DataFrame
) -> tuple[pd.DataFrame, list[str]]:
    """FreeSurfer measures (one row per subject, no age, sex or site) joined with a table of
    each subject's covariates on the subject id, and what the join left out, in words.

    The id column of each table is found by `guess_id_column`; ids are compared as text
    (FreeSurfer's subject folder names). Subjects with measures but no covariates, or the
    reverse, are left out and named; a column both tables hold is taken from the
    measures. Raises DataError when either table has no id column or no subject is in both.
    """
    m_id = guess_id_column(measures.columns)
    c_id = guess_id_column(covariates.columns)
    if m_id is None or c_id is None:
        which = "FreeSurfer" if m_id is None else "covariate"
        raise DataError(
            f"The {which} table has no subject-id column (one of "
            f"{', '.join(ID_COLUMN_NAMES[:5])}): the two tables cannot be joined."
        )
    left = measures.assign(**{m_id: measures[m_id].astype(str).str.strip()})
    right = covariates.assign(_id=covariates[c_id].astype(str).str.strip())
    dupes = right["_id"][right["_id"].duplicated()].unique().tolist()
    if dupes:
        raise DataError(
            f"The covariate table lists these subjects more than once in column '{c_id}': "
            f"{', '.join(dupes[:10])}. Keep one row per subject."
        )
    extra = [c for c in covariates.columns if c not in measures.columns and c != c_id]
    joined = left.merge(right[["_id", *extra]], left_on=m_id, right_on="_id", how="inner")
    joined = joined.drop(columns="_id").reset_index(drop=True)
    if joined.empty:
        raise DataError(
            f"No subject is in both tables: FreeSurfer ids such as "
            f"{', '.join(left[m_id].head(3))} match no '{c_id}' of the covariate table."
        )
    notes = []
    no_covariates = sorted(set(left[m_id]) - set(right["_id"]))
    no_measures = sorted(set(right["_id"]) - set(left[m_id]))
    if no_covariates:
        notes.append(
            f"{len(no_covariates)} subject(s) with FreeSurfer measures but no covariates were "
            f"left out: {', '.join(no_covariates[:10])}."
        )
    if no_measures:
        notes.append(
            f"{len(no_measures)} subject(s) of the covariate table have no FreeSurfer "
            f"measures: {', '.join(no_measures[:10])}."
        )
    return joined, notes


def apply_mapping(df: pd.DataFrame, mapping: ColumnMapping, schema: Schema) -> pd.DataFrame:
    """The uploaded table renamed and recoded into the model's columns, ready to score.

    Raises DataError listing every role that is still unmapped (age, a categorical
    covariate, an IDP), so the page can say exactly what to choose.
    """
    problems: list[Problem] = []

    def missing(role: str, what: str) -> None:
        problems.append(Problem("error", role, (), f"{what} Choose its column in the mapper."))

    out = pd.DataFrame(index=df.index)
    if schema.id:
        if mapping.id and mapping.id in df.columns:
            out[schema.id] = df[mapping.id].astype(str)
        else:
            out[schema.id] = [f"row {i}" for i in range(len(df))]
    if mapping.age and mapping.age in df.columns:
        out[schema.age] = df[mapping.age]
    else:
        missing(schema.age, "The model needs each person's age.")
    for col in schema.categorical:
        if col == "sex":
            if mapping.sex and mapping.sex in df.columns:
                raw = coerce_categories(df[mapping.sex])
                counts = category_counts(raw)
                unsaid = {v: n for v, n in counts.items() if v not in mapping.sex_coding}
                if unsaid:
                    problems.append(
                        Problem(
                            "error",
                            mapping.sex,
                            (),
                            f"say which sex each code means ({describe_counts(unsaid)}): "
                            "nothing is assumed, since tables code sex differently.",
                        )
                    )
                out[col] = raw.map(
                    lambda v: mapping.sex_coding.get(v, v) if isinstance(v, str) else v
                )
            else:
                missing(col, "The model needs each person's sex.")
        elif col == "site":
            if mapping.site and mapping.site in df.columns:
                out[col] = coerce_categories(df[mapping.site])
            elif mapping.site_value:
                out[col] = mapping.site_value
            else:
                missing(col, "The model needs a site: choose its column or one site for everyone.")
        else:
            src = mapping.covariates.get(col)
            if src and src in df.columns:
                out[col] = coerce_categories(df[src])
            else:
                missing(col, f"The model needs the covariate '{col}'.")
    unmapped = [i for i in schema.idps if mapping.idps.get(i) not in df.columns]
    if unmapped:
        shown = ", ".join(f"'{i}'" for i in unmapped[:10])
        more = f" and {len(unmapped) - 10} more" if len(unmapped) > 10 else ""
        problems.append(
            Problem(
                "error",
                None,
                (),
                f"{len(unmapped)} of the model's {len(schema.idps)} brain measures have no column "
                f"in the table: {shown}{more}. Map them, or use a model trained on the measures "
                "you have.",
            )
        )
    if problems:
        raise DataError("Some of the model's columns are not mapped yet.", problems=problems)
    idp_frame = pd.DataFrame({i: df[mapping.idps[i]] for i in schema.idps}, index=df.index)
    return pd.concat([out, idp_frame], axis=1).reset_index(drop=True)


def fan_grid(
    training: Mapping[str, Any],
    schema: Schema,
    fixed: Mapping[str, str],
    n: int = 121,
    margin: float = 0.08,
) -> pd.DataFrame:
    """Covariate rows for a fan: ages across the training range plus a margin each side.

    The margin shows where the model extrapolates (the fan chart shades it). `fixed`
    gives one value per categorical covariate; a missing one is 'unknown'.
    """
    lo, hi = (float(a) for a in training["age_range"])
    pad = margin * (hi - lo)
    ages = np.linspace(max(0.0, lo - pad), hi + pad, n)
    grid = pd.DataFrame({schema.age: ages})
    for col in schema.categorical:
        grid[col] = str(fixed.get(col, UNKNOWN_LEVEL))
    return grid


def fan_points(
    scores: pd.DataFrame,
    table: pd.DataFrame,
    schema: Schema,
    fixed: Mapping[str, str],
    idps: Sequence[str],
) -> pd.DataFrame:
    """People to draw on fans: age, value, centile, label, idp; only matching categories.

    `scores` is `model.score(table)`; people whose categorical covariates differ from
    the fan's `fixed` values are left out (an 'unknown' value matches everyone).
    """
    keep = np.ones(len(table), dtype=bool)
    for col, value in fixed.items():
        if value != UNKNOWN_LEVEL and col in table.columns:
            keep &= coerce_categories(table[col]).to_numpy(dtype=object) == str(value)
    rows = np.flatnonzero(keep)
    s = scores[scores["row"].isin(rows) & scores["idp"].isin(list(idps))]
    ages = pd.to_numeric(table[schema.age]).to_numpy(dtype=float)
    who = (
        table[schema.id].astype(str).to_numpy(dtype=object)
        if schema.id and schema.id in table
        else np.array([f"row {i}" for i in range(len(table))], dtype=object)
    )
    return pd.DataFrame(
        {
            "idp": s["idp"].to_numpy(dtype=object),
            "age": ages[s["row"].to_numpy()],
            "value": s["value"].to_numpy(dtype=float),
            "centile": s["centile"].to_numpy(dtype=float),
            "label": who[s["row"].to_numpy()],
        }
    )


def extreme_rates(scores: pd.DataFrame, threshold: float = 1.96) -> pd.DataFrame:
    """Per IDP: people scored, how many have |z| > threshold, the rate and its 95% interval.

    Under a calibrated model about 5% of a healthy cohort is extreme at 1.96; an IDP
    whose interval excludes 5% deviates from the reference as a group.
    """
    from normcore.metrics import wilson_interval  # scipy.stats: not on the scoring path

    rows = []
    for idp, part in scores.groupby("idp", sort=False):
        z = part["z"].to_numpy(dtype=float)
        z = z[np.isfinite(z)]
        k = int((np.abs(z) > threshold).sum())
        lo, hi = wilson_interval(k, len(z)) if len(z) else (np.nan, np.nan)
        rows.append(
            (idp, region_group(str(idp)), len(z), k, k / len(z) if len(z) else np.nan, lo, hi)
        )
    return pd.DataFrame(rows, columns=["idp", "group", "n", "extreme", "rate", "lo", "hi"])


def z_matrix(
    scores: pd.DataFrame,
    id_column: str | None = None,
    idps: Sequence[str] | None = None,
    max_people: int = 300,
) -> pd.DataFrame:
    """People x IDPs of z (first `max_people` rows), labelled by id if there is one."""
    key = id_column if id_column and id_column in scores.columns else "row"
    s = scores if idps is None else scores[scores["idp"].isin(list(idps))]
    first = s["row"].drop_duplicates().to_numpy()[:max_people]
    s = s[s["row"].isin(first)]
    # groupby-unstack, not pivot_table: the same table at a fraction of the cost.
    by = ["row", key, "idp"] if key != "row" else ["row", "idp"]
    wide = s.groupby(by, sort=False)["z"].mean().unstack("idp")
    if key != "row":
        wide.index = wide.index.get_level_values(key)
    order = [i for i in dict.fromkeys(s["idp"]) if i in wide.columns]
    return wide[order]


def person_profile(scores: pd.DataFrame, row: int, threshold: float = 1.96) -> pd.DataFrame:
    """One person's scores with region group, short label, an 'extreme' flag and the z
    interval `z_lo`-`z_hi` that the centile's Monte-Carlo error allows (centile +-1.96
    `centile_se`, mapped to z around the person's own z; zero width where the margins
    are exact)."""
    p = scores[scores["row"] == row].copy()
    if p.empty:
        raise ValueError(f"no scores for row {row}")
    p["group"] = [region_group(i) for i in p["idp"]]
    p["label"] = [label(i) for i in p["idp"]]
    p["extreme"] = p["z"].abs() > threshold
    tiny = 1e-6
    centile = p["centile"].to_numpy(dtype=float) / 100.0
    se = p["centile_se"].to_numpy(dtype=float) / 100.0 if "centile_se" in p else 0.0 * centile
    se = np.nan_to_num(se)
    at = ndtri(np.clip(centile, tiny, 1 - tiny))
    z = p["z"].to_numpy(dtype=float)
    p["z_lo"] = z + ndtri(np.clip(centile - 1.96 * se, tiny, 1 - tiny)) - at
    p["z_hi"] = z + ndtri(np.clip(centile + 1.96 * se, tiny, 1 - tiny)) - at
    return p.reset_index(drop=True)


def sparse_age_spans(
    ages: Sequence[float],
    age_range: Sequence[float],
    window: float = 2.5,
    minimum: int = 5,
    step: float = 0.25,
) -> list[tuple[float, float]]:
    """Age spans inside `age_range` where fewer than `minimum` reference people are within
    +-`window` years: there a centile rests on a handful of people (or on the smoothing
    alone), and the fan says so by shading them. Merged into maximal spans."""
    ages = np.sort(np.asarray(ages, dtype=float))
    ages = ages[np.isfinite(ages)]
    lo, hi = float(age_range[0]), float(age_range[1])
    if hi <= lo:
        return []
    grid = np.arange(lo, hi + step / 2, step)
    near = np.searchsorted(ages, grid + window, "right") - np.searchsorted(ages, grid - window)
    sparse = near < minimum
    spans: list[tuple[float, float]] = []
    start = None
    for x, few in zip(grid, sparse):
        if few and start is None:
            start = x
        if not few and start is not None:
            spans.append((float(max(lo, start - step / 2)), float(x - step / 2)))
            start = None
    if start is not None:
        spans.append((float(max(lo, start - step / 2)), hi))
    return spans


def reference_ages(
    table: pd.DataFrame, age_column: str, fixed: Mapping[str, str] | None = None
) -> np.ndarray:
    """The ages of the reference people a fan is drawn for: those of `table` whose
    categorical values are `fixed` ('unknown' matches everyone)."""
    people = near_age(table, age_column, 0.0, np.inf, fixed)
    ages = pd.to_numeric(people[age_column], errors="coerce").to_numpy(dtype=float)
    return ages[np.isfinite(ages)]


def kept_weights(history: Sequence[Mapping[str, Any]]) -> int | None:
    """The index in a training `history` of the weights the model kept: the first check
    with the lowest validation loss, by the rule `train.train_denoiser` keeps them."""
    best, kept = np.inf, None
    for k, entry in enumerate(history):
        value = entry.get("val_loss")
        if value is None:
            continue
        value = float(value)
        if value < best or np.isnan(value):
            best, kept = value, k
    return kept


def correlation_pair(
    real: pd.DataFrame, model: pd.DataFrame, idps: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Spearman correlation among `idps` in real people and in model samples."""
    cols = list(idps)
    r = real[cols].apply(pd.to_numeric, errors="coerce").corr(method="spearman")
    m = model[cols].apply(pd.to_numeric, errors="coerce").corr(method="spearman")
    return r, m


def near_age(
    table: pd.DataFrame,
    age_column: str,
    age: float,
    window: float,
    fixed: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The people within +-window years of `age` with the given categorical values."""
    ages = pd.to_numeric(table[age_column], errors="coerce")
    keep = (ages - age).abs() <= window
    for col, value in (fixed or {}).items():
        if value != UNKNOWN_LEVEL and col in table.columns:
            keep &= coerce_categories(table[col]) == str(value)
    return table[keep.fillna(False).to_numpy(dtype=bool)]


def real_pair_correlation_by_age(
    table: pd.DataFrame, age_column: str, a: str, b: str, bins: int = 6, min_count: int = 15
) -> pd.DataFrame:
    """Spearman r of a pair in equal-count age bins of real people (age = bin median)."""
    ages = pd.to_numeric(table[age_column], errors="coerce").to_numpy(dtype=float)
    order = np.argsort(ages, kind="stable")
    parts = [p for p in np.array_split(order, max(1, min(bins, len(ages) // min_count))) if len(p)]
    rows = []
    for p in parts:
        sub = table.iloc[p]
        r = sub[[a, b]].apply(pd.to_numeric, errors="coerce").corr(method="spearman").iloc[0, 1]
        rows.append((float(np.median(ages[p])), "real", float(r), len(p)))
    return pd.DataFrame(rows, columns=["age", "source", "r", "n"])


def model_pair_correlation_by_age(
    samples: pd.DataFrame, grid: pd.DataFrame, age_column: str, a: str, b: str
) -> pd.DataFrame:
    """Spearman r of a pair among model samples at each grid age (`grid_row` from sample)."""
    rows = []
    for g, part in samples.groupby("grid_row"):
        r = part[[a, b]].corr(method="spearman").iloc[0, 1]
        rows.append((float(grid[age_column].iloc[int(g)]), "model", float(r), len(part)))
    return pd.DataFrame(rows, columns=["age", "source", "r", "n"])


def pit_matrix(scores: pd.DataFrame) -> pd.DataFrame:
    """People x IDPs of PIT values (centile / 100) from a `score` table, IDPs in model order."""
    order = list(dict.fromkeys(scores["idp"]))
    wide = scores.pivot(index="row", columns="idp", values="centile") / 100.0
    return wide[order]


def calibration_summary(
    scores: pd.DataFrame, nominal: Sequence[float] = (0.5, 0.8, 0.9, 0.95)
) -> pd.DataFrame:
    """How often central centile intervals contain held-out people, over all IDPs.

    One row per nominal level: the mean empirical coverage over IDPs and the IDP that
    misses most. A calibrated model's 90% interval contains about 90% of new people.
    """
    from normcore.metrics import coverage  # scipy.stats: not on the scoring path

    cov = coverage(pit_matrix(scores), nominal)
    rows = []
    for level, part in cov.groupby("nominal"):
        worst = part.loc[part["error"].abs().idxmax()]
        rows.append(
            (
                f"{level:.0%}",
                float(part["empirical"].mean()),
                str(worst["idp"]),
                float(worst["empirical"]),
            )
        )
    return pd.DataFrame(rows, columns=["interval", "mean coverage", "worst IDP", "worst coverage"])


def truth_long(
    grid: pd.DataFrame,
    idps: Sequence[str],
    quantiles: Sequence[float],
    values: np.ndarray,
    age_column: str = "age",
) -> pd.DataFrame:
    """An (n rows, D, Q) array of quantiles as the long table `centiles` returns."""
    n, d, q = values.shape
    return pd.DataFrame(
        {
            age_column: np.repeat(grid[age_column].to_numpy(dtype=float), d * q),
            "idp": np.tile(np.repeat(np.array(list(idps), dtype=object), q), n),
            "quantile": np.tile(np.asarray(quantiles, dtype=float), n * d),
            "value": values.reshape(-1),
        }
    )


def curve_distance(learned: pd.DataFrame, truth: pd.DataFrame, age_column: str = "age") -> float:
    """Mean absolute distance between learned and true centile curves (measure units).

    Both are long tables (age, idp, quantile, value) over the same ages; rows are matched
    on those keys, not on position, so a reordered table cannot give a wrong answer.
    """
    keys = [age_column, "idp", "quantile"]
    both = learned[[*keys, "value"]].merge(
        truth[[*keys, "value"]], on=keys, suffixes=("_learned", "_true"), validate="one_to_one"
    )
    if len(both) != len(truth):
        raise ValueError("learned and true centiles do not cover the same ages, IDPs and levels")
    diff = both["value_learned"].to_numpy(dtype=float) - both["value_true"].to_numpy(dtype=float)
    return float(np.mean(np.abs(diff)))


def age_slider_range(
    age_range: Sequence[float], preferred: float = 30.0
) -> tuple[float, float, float]:
    """Whole-year bounds around the training ages and a start value inside them.

    An age slider in whole years must include the youngest and oldest training person,
    and start at a familiar age (`preferred`) when the model covers it.
    """
    lo, hi = (float(a) for a in age_range)
    return float(np.floor(lo)), float(np.ceil(hi)), float(np.clip(preferred, lo, hi))


def category_counts(values: pd.Series) -> dict[str, int]:
    """How many rows hold each category (as the model reads it: 1, 1.0 and "1" agree)."""
    found = coerce_categories(values).value_counts(sort=False)
    return {str(k): int(v) for k, v in found.sort_index().items()}


def unseen_levels_summary(scores: pd.DataFrame, table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per covariate column, each value the model has not seen and how many people have it.

    `scores` is `model.score(table)`: its `unseen_levels` flag names the columns ("site",
    "sex,site") whose value was replaced by the model's 'unknown' level for that row.
    """
    flagged = scores.loc[scores["unseen_levels"].astype(str) != "", ["row", "unseen_levels"]]
    out: dict[str, dict[str, int]] = {}
    for row, cols in flagged.drop_duplicates("row").itertuples(index=False):
        for col in str(cols).split(","):
            if col in table.columns:
                value = str(coerce_categories(table[col].iloc[[int(row)]]).iloc[0])
            else:  # the model scores a table without the column with the 'unknown' level
                value = "(no column)"
            out.setdefault(col, {})
            out[col][value] = out[col].get(value, 0) + 1
    return out


def unseen_levels_message(summary: Mapping[str, Mapping[str, int]], safe_per_sex: int) -> str:
    """Plain words for people scored with the 'unknown' level, and what to do about it."""
    counts = [sum(v.values()) for v in summary.values()]
    n = counts[0] if len(counts) == 1 else None  # people may be flagged in several columns
    who = "Some people have" if n is None else f"{n} {'person has' if n == 1 else 'people have'}"
    parts = []
    for col, values in summary.items():
        shown = ", ".join(f"'{v}' ({k})" for v, k in values.items())
        parts.append(f"{'site' if col == 'site' else repr(col) + ' value'} {shown}")
    level = "'unknown site'" if list(summary) == ["site"] else "'unknown'"
    text = (
        f"{who} a value the model has not seen in training ({'; '.join(parts)}). "
        f"Scored with the model's {level} level, which averages over the training "
        "sites, the centiles and z-scores still contain that scanner's own offset."
    )
    if "site" in summary:
        text += (
            " To score them fairly, adapt the model to that site on the **Model** page "
            f"(*Adapt to my site*) with healthy controls scanned there, at least {safe_per_sex} "
            "per sex."
        )
    return text


def model_card(model: Any) -> dict[str, Any]:
    """What the sidebar and the Model page say about a fitted model, in plain values
    (read through its public properties)."""
    t = model.training_summary
    lo, hi = model.age_range
    counts = t.get("level_counts", {})
    corrections = model.corrections
    return {
        "training people": int(t["n"]),
        "IDPs": len(model.idps),
        "age range": f"{lo:.1f}-{hi:.1f} years",
        "sites": len(counts.get("site", {})) if "site" in counts else "-",
        "covariates": ", ".join(model.schema.covariates),
        "backbone": model.config.backbone,
        "training time": f"{model.fit_seconds:.0f} s",
        "moment matching": _moment_map_text(corrections["moment_map"][0]),
        "new-person spread": _predictive_text(corrections["new_person_spread"]),
        "deviation calibration": _deviation_calibration_text(
            corrections["deviation_calibration"]
        ),
        "adapted sites": adapted_sites(model.adaptations),
        **provenance_card(model),
    }


def provenance_card(model: Any) -> dict[str, str]:
    """Where the model came from, to compare with what its provider published (the same
    values `normcore info MODEL` prints)."""
    origin = model.origin
    digest = model.training_summary.get("table_sha256", "not recorded")
    if origin is None:
        return {
            "fingerprint (SHA-256)": "not saved yet: fitted or adapted in this session",
            "training table SHA-256": digest,
        }
    return {
        "fingerprint (SHA-256)": origin.fingerprint,
        "signature": origin.signature_text,
        "created": origin.created,
        "normcore version": origin.normcore_version,
        "training table SHA-256": digest,
    }


def _moment_map_text(matrix: np.ndarray) -> str:
    """The moment matching's map, told by its diagonal (each IDP's own gain)."""
    if np.array_equal(matrix, np.eye(len(matrix))):
        return "none (too few validation people to measure it)"
    gain = np.diag(matrix)
    return (
        f"x{gain.min():.2f} to x{gain.max():.2f} across IDPs "
        "(denoiser mean, spread and correlations matched)"
    )


def _predictive_text(spread: NewPersonSpread) -> str:
    dof = spread.dof
    tails = "normal tails" if dof is None else f"Student-t tails, {dof:.0f} degrees of freedom"
    text = f"x{spread.scale:.2f}, {tails} (5-fold cross-validation of the first stage)"
    if spread.largest_factor() > 1.0:
        text += (
            f"; wider for sites with few training people, up to x{spread.largest_factor():.2f}"
            " for the smallest"
        )
    return text


def _deviation_calibration_text(calibration: DeviationCalibration) -> str:
    c = calibration
    sites = ""
    if c.site_shifts:
        sites = (
            f"; per site, shifts from {min(c.site_shifts):+.2f} to {max(c.site_shifts):+.2f}"
            " (out-of-fold training people)"
        )
    if (c.shift, c.spread, c.shift_slope, c.log_spread_slope) == (0.0, 1.0, 0.0, 0.0):
        none = "none (people matched the model within noise, or were too few to measure it)"
        return none + sites
    text = f"shift {c.shift:+.2f}, spread x{c.spread:.2f}"
    if c.shift_slope or c.log_spread_slope:
        lo, hi = c.ages
        span = hi - lo
        text += (
            f" at age {0.5 * (lo + hi):.0f}; over ages {lo:.0f}-{hi:.0f} the shift changes by "
            f"{c.shift_slope * span:+.2f} and the spread x{np.exp(c.log_spread_slope * span):.2f}"
        )
    return text + " (out-of-fold training people, corrected by validation people)" + sites


def adapted_sites(adaptations: Sequence[Mapping[str, Any]]) -> str:
    """The adapted levels with their number of controls, latest adaptation of each level."""
    latest = {str(a["level"]): int(a["n_controls"]) for a in adaptations}
    return ", ".join(f"{lv} ({n} controls)" for lv, n in latest.items()) or "none"


#: Head-size measures a profile is most often read "given": FreeSurfer's eTIV under its
#: aseg.stats table name and under its long name.
HEAD_SIZE_IDPS = ("eTIV", "EstimatedTotalIntraCranialVol")


def default_given(idps: Sequence[str]) -> list[str]:
    """The IDPs a conditional profile is first shown given: the head size (eTIV) when the
    model has it, since "is this region small for a head of this size?" is the question
    clinicians ask first (README, "Conditional centiles"); none otherwise."""
    return [name for name in HEAD_SIZE_IDPS if name in idps][:1]


def imputed_columns(scores: pd.DataFrame) -> list[str]:
    """The `imputed_qNN` columns of a score table, lowest quantile first."""
    return sorted(c for c in scores.columns if str(c).startswith("imputed_q"))


def imputed_band_z(model: Any, person: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Where the imputed band of each IDP a person lacks falls among people of the same
    age, sex and site: one row per missing IDP (`idp`), and per `imputed_qNN` column of
    `scores` (the person's rows of `model.score(person)`) a column `z_qNN`.

    Why: the deviation profile is read in z, but the imputed quantiles arrive in the
    IDP's units. Each quantile is placed in the reference law by scoring the person with
    the missing cells filled by it; z is monotone in the value, so the band's quantiles
    stay its quantiles. Filled in, the person has no blank cell, so this is a reference
    lookup, never a draw.
    """
    columns = imputed_columns(scores)
    missing = scores.loc[scores["value"].isna() & scores[columns].notna().all(axis=1)]
    out = pd.DataFrame({"idp": missing["idp"].tolist()})
    if missing.empty or not columns:
        return out
    filled = person.iloc[[0] * len(columns)].reset_index(drop=True)
    for idp, band in zip(missing["idp"], missing[columns].to_numpy(dtype=float)):
        filled[idp] = band
    placed = model.score(filled)
    for k, column in enumerate(columns):
        at = placed[placed["row"] == k].set_index("idp")["z"]
        out[f"z_{column.removeprefix('imputed_')}"] = at.reindex(out["idp"]).to_numpy()
    return out


def share_between(
    draws: pd.DataFrame, margins: pd.DataFrame, idp: str, lo: float, hi: float
) -> float:
    """Share of `draws[idp]` (model.sample) between the `lo` and `hi` quantiles of the
    `margins` table (`model.centiles` at the same covariates): near hi - lo when the
    draws and the centiles are one law (issue 17, item 4)."""
    one = margins[margins["idp"] == idp]
    quantiles = one["quantile"].to_numpy(dtype=float)
    low = float(one["value"].to_numpy()[np.isclose(quantiles, lo)][0])
    high = float(one["value"].to_numpy()[np.isclose(quantiles, hi)][0])
    values = draws[idp].to_numpy(dtype=float)
    return float(np.mean((values >= low) & (values <= high)))


def seconds_left(elapsed: float, fraction: float) -> float | None:
    """Seconds a task still needs if it keeps the pace it had so far: elapsed x (1 - f) / f.

    None before any progress is reported (f <= 0): no pace to extrapolate from. The pace of
    a phase whose steps cost alike (the centile table tabulates one sex/site combination per
    step) makes a fair estimate; a phase that slows down is underestimated.
    """
    if fraction <= 0.0 or elapsed < 0.0:
        return None
    return elapsed * (1.0 - min(fraction, 1.0)) / fraction
