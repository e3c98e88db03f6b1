"""The tables behind the dashboard's charts: grids, column mappings, summaries, a report.

The dashboard's pages only lay out widgets; whatever they show that needs arithmetic
(which ages to draw a fan over, how an uploaded table's columns become the model's,
how often z is extreme per IDP, how a pair's correlation changes with age) is computed
here, by pure functions that the tests can check without Streamlit.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from normcore.errors import DataError
from normcore.idp_groups import label, region_group
from normcore.metrics import coverage, wilson_interval
from normcore.preprocessing import UNKNOWN
from normcore.schema import Problem, Schema, coerce_categories

__all__ = [
    "UNKNOWN_LEVEL",
    "ColumnMapping",
    "guess_mapping",
    "guess_sex_coding",
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
    "individual_report_html",
    "pit_matrix",
    "calibration_summary",
    "truth_long",
    "curve_distance",
    "age_slider_range",
    "category_counts",
    "unseen_levels_summary",
    "unseen_levels_message",
    "model_card",
    "adapted_sites",
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


def guess_sex_coding(values: Sequence[Any], levels: Sequence[str]) -> dict[str, str]:
    """A first guess of how a table's sex values map to the model's levels.

    Codes that are all model levels map to themselves. Otherwise female-looking text
    (f, female, w, woman) goes to the model's first level and male-looking text (m, male,
    man) to the second, and two numeric codes (e.g. 1/2) go in sorted order: the fcon1000
    convention (0 = female, 1 = male) puts female first. It is only a guess: the page
    shows it for the user to check.
    """
    vals = sorted({str(v) for v in coerce_categories(pd.Series(list(values))).dropna()})
    levels = [str(v) for v in levels]
    coding: dict[str, str] = {}
    if not levels:
        return coding
    if set(vals) <= set(levels):
        return {v: v for v in vals}
    female, male = levels[0], levels[-1]
    rest = []
    for v in vals:
        low = v.strip().lower()
        if low in ("f", "female", "w", "woman", "girl"):
            coding[v] = female
        elif low in ("m", "male", "man", "boy"):
            coding[v] = male
        else:
            rest.append(v)
    free = [lv for lv in levels if lv not in coding.values()]
    for v, lv in zip(rest, free):
        coding[v] = lv
    return coding


def guess_mapping(
    df: pd.DataFrame,
    schema: Schema | None = None,
    levels: Mapping[str, Sequence[str]] | None = None,
) -> ColumnMapping:
    """Pre-fill the column mapper: the model's own names first, then common spellings."""
    columns = [str(c) for c in df.columns]
    age = _find(columns, schema.age if schema else "age", "age", "age_years", "Age")
    sex = _find(columns, "sex", "gender", "Sex")
    site = _find(columns, "site", "scanner", "centre", "center", "Site")
    id_ = _find(
        columns,
        *([schema.id] if schema and schema.id else []),
        "sub_id",
        "subject_id",
        "participant_id",
        "participant",
        "subject",
        "id",
        "ID",
    )
    mapping = ColumnMapping(id=id_, age=age, sex=sex, site=site)
    if schema is not None:
        extra = [c for c in schema.categorical if c not in ("sex", "site")]
        mapping.covariates = {c: m for c in extra if (m := _find(columns, c)) is not None}
        mapping.idps = {i: m for i in schema.idps if (m := _find(columns, i)) is not None}
    if sex is not None and levels and "sex" in levels:
        mapping.sex_coding = guess_sex_coding(df[sex].tolist(), levels["sex"])
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
    wide = s.pivot_table(
        index=["row", key] if key != "row" else "row", columns="idp", values="z", sort=False
    )
    if key != "row":
        wide.index = wide.index.get_level_values(key)
    order = [i for i in dict.fromkeys(s["idp"]) if i in wide.columns]
    return wide[order]


def person_profile(scores: pd.DataFrame, row: int, threshold: float = 1.96) -> pd.DataFrame:
    """One person's scores with region group, short label and an 'extreme' flag."""
    p = scores[scores["row"] == row].copy()
    if p.empty:
        raise ValueError(f"no scores for row {row}")
    p["group"] = [region_group(i) for i in p["idp"]]
    p["label"] = [label(i) for i in p["idp"]]
    p["extreme"] = p["z"].abs() > threshold
    return p.reset_index(drop=True)


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


def individual_report_html(
    person: Mapping[str, Any],
    profile: pd.DataFrame,
    deviation_centile: float | None,
    figures: Sequence[Any],
    model_summary: Mapping[str, Any],
) -> str:
    """A self-contained one-page HTML report of one person's deviations.

    `person`: covariates to print; `profile`: from `person_profile`; `figures`: plotly
    figures (the first embeds plotly.js so the file opens offline).
    """
    esc = html.escape
    cov = "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in person.items()
    )
    model = "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in model_summary.items()
    )
    flagged = profile[profile["extreme"]].sort_values("z", key=np.abs, ascending=False)
    rows = (
        "".join(
            f"<tr><td>{esc(r.group)}</td><td>{esc(r.idp)}</td><td>{r.value:.4g}</td>"
            f"<td>{r.centile:.1f}</td><td>{r.z:+.2f}</td></tr>"
            for r in flagged.itertuples()
        )
        or "<tr><td colspan=5>No measure beyond |z| = 1.96.</td></tr>"
    )
    dev = (
        ""
        if deviation_centile is None
        else f"<p><b>Multivariate deviation centile:</b> {deviation_centile:.1f} "
        "(how unusual the whole profile is among model samples of the same sex and site; "
        "100 = more unusual than all).</p>"
    )
    plots = "".join(
        fig.to_html(full_html=False, include_plotlyjs=(k == 0), default_height="380px")
        for k, fig in enumerate(figures)
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>normcore individual report</title>
<style>
body {{font-family: sans-serif; color: #1c2b36; max-width: 1100px; margin: 1.5em auto;}}
table {{border-collapse: collapse; margin: 0.5em 0 1em 0;}}
th, td {{border: 1px solid #cfd8de; padding: 3px 8px; text-align: left; font-size: 13px;}}
th {{background: #eef3f6;}}
.cols {{display: flex; gap: 2em;}}
small {{color: #555;}}
</style></head><body>
<h1>Individual deviation report</h1>
<div class="cols"><div><h3>Person</h3><table>{cov}</table></div>
<div><h3>Model</h3><table>{model}</table></div></div>
{dev}
<p>{int(profile["extreme"].sum())} of {len(profile)} measures have |z| &gt; 1.96
(about {0.05 * len(profile):.1f} expected by chance).</p>
<h3>Flagged measures</h3>
<table><tr><th>group</th><th>measure</th><th>value</th><th>centile</th><th>z</th></tr>{rows}</table>
{plots}
<p><small>Centiles and z-scores from a normative model (normcore). A z beyond +-1.96 is
expected in 5% of healthy people per measure; it is a prompt to look, not a diagnosis.</small></p>
</body></html>"""


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
        "age range": f"{lo:.0f}-{hi:.0f} years",
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


def _predictive_text(predictive: Sequence[float | None]) -> str:
    scale, dof = predictive
    tails = "normal tails" if dof is None else f"Student-t tails, {dof:.0f} degrees of freedom"
    return f"x{scale:.2f}, {tails} (5-fold cross-validation of the first stage)"


def _deviation_calibration_text(calibration: Sequence[float]) -> str:
    shift, spread = calibration
    if (shift, spread) == (0.0, 1.0):
        return "none (validation people matched the model within noise, or were too few)"
    return f"shift {shift:+.2f}, spread x{spread:.2f} (measured on validation people)"


def adapted_sites(adaptations: Sequence[Mapping[str, Any]]) -> str:
    """The adapted levels with their number of controls, latest adaptation of each level."""
    latest = {str(a["level"]): int(a["n_controls"]) for a in adaptations}
    return ", ".join(f"{lv} ({n} controls)" for lv, n in latest.items()) or "none"
