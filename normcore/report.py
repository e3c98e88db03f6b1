"""Reports for people to read: an evaluation as `metrics.json` plus a self-contained
`report.html`, and the one-page report on one person (`individual_report_html`).

The HTML page embeds plotly.js once (with the first figure), so it opens offline, can be
e-mailed or archived with a paper, and shows exactly the figures of the dashboard's
Diagnostics page (`normcore.figures.diagnostics`). Every metric in its summary table
comes with a sentence saying what it measures and what a calibrated model scores, since
the readers are clinicians and reviewers, not only the model's authors.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from normcore.evaluate import EvaluationResult
from normcore.figures import diagnostics
from normcore.safe_write import atomic_output
from normcore.units import format_value

_STYLE = """
body { font-family: sans-serif; color: #1c2b36; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #d5dde3; }
.meta { color: #51606b; margin: 0.2em 0 1.5em; }
table { border-collapse: collapse; width: 100%; font-size: 0.93em; }
th, td { text-align: left; padding: 0.35em 0.6em; border-bottom: 1px solid #e3e8ec;
         vertical-align: top; }
th { background: #f3f6f8; }
td.value { font-variant-numeric: tabular-nums; white-space: nowrap; }
.note { color: #51606b; font-size: 0.92em; }
.figure { margin: 1em 0 1.5em; }
"""


def report_html(
    result: EvaluationResult,
    title: str = "normcore evaluation report",
    model_name: str | None = None,
    data_name: str | None = None,
) -> str:
    """The evaluation as one self-contained HTML page (plotly.js embedded, no network).

    `model_name` and `data_name` (e.g. the file names) label the header; the rest comes
    from `result`.
    """
    m = result.metrics
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        _header(m, model_name, data_name),
        "<h2>Summary</h2>",
        _summary_table(result),
    ]
    first = True
    for item in _body(result):
        if isinstance(item, str):
            parts.append(item)
            continue
        config = {"displaylogo": False, "responsive": True}
        figure = item.to_html(full_html=False, include_plotlyjs=first, config=config)
        parts.append(f'<div class="figure">{figure}</div>')
        first = False
    parts.append(_footer(m))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    result: EvaluationResult,
    out_dir: str | os.PathLike,
    title: str = "normcore evaluation report",
    model_name: str | None = None,
    data_name: str | None = None,
) -> tuple[Path, Path]:
    """Write `metrics.json` (strict JSON, NaN as null) and `report.html` into `out_dir`.

    Creates `out_dir` if needed and returns the two paths. Each file is written whole or
    not at all (`safe_write.atomic_output`): both are built before either is written, and
    an interrupted write leaves no half report beside a previous run's.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path, report_path = out / "metrics.json", out / "report.html"
    metrics = json.dumps(result.metrics, indent=2, allow_nan=False) + "\n"
    page = report_html(result, title, model_name, data_name)
    for path, text in ((metrics_path, metrics), (report_path, page)):
        with atomic_output(path, text=True) as f:
            f.write(text)
    return metrics_path, report_path


# ------------------------------------------------------------------------ pieces


def _esc(value: object) -> str:
    return html.escape(str(value))


def _num(value: object, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _header(m: dict, model_name: str | None, data_name: str | None) -> str:
    model, data = m["model"], m["data"]
    trained = f"trained on {model['n_train']} people" if model.get("n_train") else ""
    ages = model.get("age_range")
    age_text = f", ages {ages[0]:.4g}-{ages[1]:.4g}" if ages else ""
    lines = [
        f"<b>Model</b>: {_esc(model_name or 'NormativeModel')} ({_esc(model['backbone'])} "
        f"backbone, {_esc(trained)}{_esc(age_text)}; created {_esc(model.get('created') or '?')})",
        f"<b>Data</b>: {_esc(data_name or 'evaluation table')}: {data['n']} people x "
        f"{data['n_idps']} IDPs; {data['n_generated']} model samples drawn at their covariates",
        f"<b>Evaluated</b>: {_esc(m['date'])}",
    ]
    flags = []
    if data["n_out_of_age_range"]:
        flags.append(f"{data['n_out_of_age_range']} people outside the training age range")
    if data["n_unseen_levels"]:
        flags.append(f"{data['n_unseen_levels']} people with a site/sex level unseen in training")
    if flags:
        lines.append("<b>Note</b>: " + _esc("; ".join(flags)) + " (scored, and included).")
    return '<div class="meta">' + "<br>".join(lines) + "</div>"


def _ace_noise_floor(result: EvaluationResult) -> float:
    """ACE a perfectly calibrated model would show from sampling noise alone."""
    ace = result.ace
    if ace.empty:
        return float("nan")
    q, n = ace["quantile"].to_numpy(dtype=float), ace["n"].to_numpy(dtype=float)
    return float(np.mean(np.sqrt(2 * q * (1 - q) / (np.pi * np.maximum(n, 1)))))


def _summary_table(result: EvaluationResult) -> str:
    m = result.metrics
    ks, ks_age, strata = m["pit_ks"], m["ks_age_bin"], m["strata"]
    dev = m["deviation"]
    rows: list[tuple[str, str, str]] = [
        (
            "ACE",
            _num(m["ace"]),
            "Average gap between the share of people below each model centile (2nd, 25th, 50th, "
            "75th, 98th) and the centile itself, per age bin. 0 is perfect; sampling noise alone "
            f"gives about {_num(_ace_noise_floor(result))} here.",
        ),
        (
            "95% interval coverage error",
            _num(m["coverage95_error"]),
            "Share of people inside the model's central 95% range, minus 0.95. Negative: the "
            "ranges are too narrow and too many healthy people look abnormal; positive: too wide.",
        ),
        (
            "PIT KS, mean / max over IDPs",
            f"{_num(ks['mean'])} / {_num(ks['max'])}",
            "Distance between each IDP's centile distribution and the flat one a calibrated model "
            f"gives (0 = identical). Worst IDP: {ks['worst_idp']}.",
        ),
        (
            "IDPs failing the KS test",
            _pct(ks["fraction_significant"]),
            "Share of IDPs whose centiles are detectably not uniform (Benjamini-Hochberg, 5%). "
            "Near 0 for a calibrated model.",
        ),
        (
            "KS real vs model, per age bin",
            _num(ks_age["mean_statistic"]),
            "Mean two-sample KS distance between real values and model samples within age bins; "
            f"{_pct(ks_age['fraction_idps_fisher'])} of IDPs differ detectably (Fisher-combined, "
            f"BH 5%; Stouffer: {_pct(ks_age['fraction_idps_stouffer'])}).",
        ),
        (
            "Miscalibrated strata",
            f"{strata['n_miscalibrated']} of {strata['n_evaluated']}",
            "Groups (age band, sex, site and their crossings, at least 10 people) whose centiles "
            f"are detectably off (BH 5% within each grouping); {strata['n_too_small']} groups were "
            "too small to judge.",
        ),
    ]
    corr = m["correlation_error"]
    if corr is not None:
        rows.append(
            (
                "Correlation error (Pearson / Spearman)",
                f"{_num(corr['pearson'])} / {_num(corr['spearman'])}",
                "Mean absolute difference between real and model correlations of IDP pairs. A "
                f"model treating IDPs as independent scores {_num(corr['independent_baseline'])}.",
            )
        )
    rows.append(
        (
            "Energy distance (all IDPs)",
            f"{_num(m['energy_distance'])} (independent: {_num(m['energy_distance_independent'])})",
            "Distance between the real and model joint distributions of all standardised IDPs; "
            "0 = identical. In brackets, the model's samples with dependence destroyed.",
        )
    )
    rows.append(
        (
            "MMD\u00b2 (RBF, all IDPs)",
            f"{_num(m['mmd'])} (independent: {_num(m['mmd_independent'])})",
            "Another distance between real and model joint distributions (near 0 or slightly "
            "negative when equal).",
        )
    )
    jp = m["joint_vs_product"]
    if jp is not None:
        rows.append(
            (
                "Pairs where the joint beats independence",
                _pct(jp["fraction_joint_better"]),
                f"Of {jp['n_pairs']} IDP pairs, the share whose real joint distribution the "
                "model's joint samples match better than its own marginals resampled "
                "independently.",
            )
        )
    mantel = m["pair_of_pair_mantel"]
    if mantel is not None:
        rows.append(
            (
                "Pair-of-pair Mantel",
                f"{_num(mantel['statistic'])} (p = {_num(mantel['p_value'])})",
                "Do IDP pairs that share a dependence shape in the real data share it in the "
                "model too? Near 1: yes (higher-order dependence kept); near 0: no.",
            )
        )
    mem = m["memorisation"]
    if mem is not None:
        rows.append(
            (
                "Memorisation P(r < 1)",
                f"{_num(mem['p_r_lt_1'])} [{_num(mem['wilson_low'])}, {_num(mem['wilson_high'])}]",
                "Share of model samples closer to a training person than to an unseen person "
                "(95% Wilson interval). 0.5 = no memorisation; well above 0.5 = copies training "
                f"data. Near-duplicates: {_pct(mem['near_duplicate_rate'])}.",
            )
        )
    rows.append(
        (
            "Multivariate deviation KS",
            _num(dev["ks_statistic"]),
            "Distance of the per-person whole-profile deviation centiles from uniform; for "
            f"controls it should be near 0. {_pct(dev['fraction_above_95'])} of people are above "
            "the 95th deviation centile (5% expected).",
        )
    )
    body = "".join(
        f'<tr><td>{_esc(name)}</td><td class="value">{_esc(value)}</td><td>{_esc(text)}</td></tr>'
        for name, value, text in rows
    )
    return (
        "<table><thead><tr><th>Metric</th><th>Value</th><th>What it means</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _strata_table(m: dict) -> str:
    listed = m["strata"]["miscalibrated"]
    if not listed:
        return '<p class="note">No stratum is detectably miscalibrated.</p>'
    body = "".join(
        f"<tr><td>{_esc(s['by'])}</td><td>{_esc(s['stratum'])}</td><td>{s['n']}</td>"
        f'<td class="value">{_num(s["ks_mean"])}</td>'
        f'<td class="value">{_num(s["coverage95_error"])}</td>'
        f'<td class="value">{_num(s["p_adjusted"])}</td></tr>'
        for s in listed
    )
    more = m["strata"]["n_miscalibrated"] - len(listed)
    tail = f'<p class="note">... and {more} more (see the strata table).</p>' if more > 0 else ""
    return (
        "<h3>Miscalibrated strata (worst first)</h3><table><thead><tr><th>grouping</th>"
        "<th>stratum</th><th>n</th><th>mean KS</th><th>95% coverage error</th>"
        f"<th>p (BH)</th></tr></thead><tbody>{body}</tbody></table>{tail}"
    )


def _heatmap_groupings(result: EvaluationResult) -> list[tuple[str, str]]:
    """(rows, columns) of every two-factor grouping with evaluated strata; the factor with
    more levels goes on the rows so that the page stays narrow."""
    out = []
    strata = result.strata
    for by in strata["by"].unique():
        factors = by.split(" x ")
        if len(factors) != 2 or not strata.loc[strata["by"] == by, "evaluated"].any():
            continue
        cells = strata[strata["by"] == by]
        a, b = factors
        out.append((a, b) if cells[a].nunique() >= cells[b].nunique() else (b, a))
    return out


def _section(heading: str, note: str | None = None) -> str:
    return f"<h2>{_esc(heading)}</h2>" + (f'<p class="note">{_esc(note)}</p>' if note else "")


def _body(result: EvaluationResult) -> list[str | go.Figure]:
    """The page after the summary, in order: HTML snippets and figures."""
    pit = result.pit[result.idps]
    worst = [str(i) for i in result.ks_idp["idp"].head(3)]
    body: list[str | go.Figure] = [
        _section(
            "Calibration",
            "PIT = the model's centile of each person's own value at their own age, sex and "
            "site, divided by 100. Uniform when calibrated. Outlined: the 3 IDPs with the "
            "largest KS distance.",
        ),
        diagnostics.pit_histogram(pit, show=worst),
        diagnostics.pit_qq(pit, show=worst),
        diagnostics.coverage_curve(result.coverage),
        diagnostics.ace_by_age(result.ace),
        diagnostics.ks_per_idp(result.ks_idp),
        _section(
            "Calibration per stratum",
            "Mean KS distance from uniform over IDPs, per stratum; * marks strata whose "
            "centiles are detectably off, blank cells have fewer than 10 people.",
        ),
    ]
    body += [
        diagnostics.strata_heatmap(result.strata, rows=rows, columns=columns)
        for rows, columns in _heatmap_groupings(result)
    ]
    body.append(_strata_table(result.metrics))
    body += [
        _section(
            "Multivariate deviation",
            "One score per person for how unusual the whole IDP profile is given their "
            "covariates, as a centile among model samples. Uniform for controls.",
        ),
        diagnostics.deviation_histogram(result.deviation),
    ]
    if len(result.correlations):
        body += [
            _section(
                "Dependence",
                "Model samples are drawn at the evaluated people's own "
                "covariates, so real and model correlations are directly comparable.",
            ),
            diagnostics.correlation_scatter(result.correlations),
            diagnostics.joint_vs_product(result.dependence),
        ]
    if result.memorisation_r is not None:
        body += [
            _section(
                "Memorisation",
                "For each model sample, r = distance to the nearest "
                "training person / distance to the nearest evaluated (unseen) person.",
            ),
            diagnostics.memorisation_histogram(result.memorisation_r),
        ]
    return body


def _footer(m: dict) -> str:
    seconds = m["seconds"]
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return (
        f'<p class="note">Generated by normcore on {_esc(now)}. Timings: {_esc(timing)}. '
        "All numbers are in metrics.json next to this file.</p>"
    )


# ------------------------------------------------------------- one person's report

#: Score columns that flag a whole person or one of their measures, with the words the
#: report prints for them. Any other flag column a model adds is printed under its name.
_PERSON_FLAGS = ("out_of_age_range", "unseen_levels")
_MEASURE_FLAG_WORDS = {
    "beyond_reference": "beyond the reference (|z| > 3, extrapolated tail)",
    "implausible": "implausible value",
    "missing": "missing value",
}
_NOT_FLAGS = {"row", "idp", "value", "centile", "z", "centile_se", "group", "label", "extreme",
              "z_lo", "z_hi"}


def _measure_flags(row: Mapping[str, Any]) -> list[str]:
    """The words for every per-measure flag (a true boolean column) set on one profile row."""
    found = []
    for name, value in row.items():
        if name in _NOT_FLAGS or name in _PERSON_FLAGS or not isinstance(name, str):
            continue
        if isinstance(value, (bool, np.bool_)) and value:
            found.append(_MEASURE_FLAG_WORDS.get(name, name.replace("_", " ")))
    return found


def _person_flags(
    profile: pd.DataFrame, person: Mapping[str, Any], age: float | None,
    age_range: Sequence[float] | None,
) -> list[str]:
    """Sentences for the flags that concern the whole person (age, unseen levels)."""
    flags = []
    if "out_of_age_range" in profile and bool(profile["out_of_age_range"].any()):
        where = (
            f" {age:.1f} years is outside the model's training ages "
            f"{float(age_range[0]):.1f}-{float(age_range[1]):.1f} years:"
            if age is not None and age_range is not None else ""
        )
        flags.append(
            f"Age out of range.{where} the model extrapolates, so every centile below is "
            "less reliable."
        )
    if "unseen_levels" in profile:
        unseen = sorted({c for v in profile["unseen_levels"].astype(str) for c in v.split(",")
                         if c})
        for column in unseen:
            flags.append(
                f"Unseen {column}: '{person.get(column, '?')}' was not in the model's training "
                "data; scored with the model's 'unknown' level, which averages over the "
                "training levels."
            )
    return flags


def individual_report_html(
    person: Mapping[str, Any],
    profile: pd.DataFrame,
    deviation_centile: float | None,
    figures: Sequence[Any],
    model_summary: Mapping[str, Any],
    notes: Sequence[str] = (),
    age: float | None = None,
    age_range: Sequence[float] | None = None,
) -> str:
    """A self-contained one-page HTML report of one person's deviations.

    `person`: what to print about the person, covariates as words ('female', the site's
    name; `explore.level_text` decodes codes); `profile`: from `explore.person_profile`,
    with the score's flag columns; `notes`: every warning the screen showed for this
    person, printed as they were (the report must not be more reassuring than the
    screen); `age` and `age_range` (the training ages) word the out-of-range flag;
    `figures`: plotly figures (the first embeds plotly.js so the file opens offline).
    Every measure with |z| > 1.96 or any flag is listed with its unit and its flags.
    """
    esc = html.escape
    cov = "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in person.items()
    )
    model = "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in model_summary.items()
    )
    flags_of = [_measure_flags(r) for r in profile.to_dict("records")]
    listed = profile.assign(flag_words=flags_of)
    listed = listed[listed["extreme"] | listed["flag_words"].map(bool)]
    listed = listed.sort_values("z", key=np.abs, ascending=False)
    rows = (
        "".join(
            f"<tr><td>{esc(str(r.group))}</td><td>{esc(str(r.idp))}</td>"
            f"<td>{esc(format_value(str(r.idp), float(r.value)))}</td>"
            f"<td>{r.centile:.1f}</td><td>{r.z:+.2f}</td>"
            f"<td>{esc('; '.join(r.flag_words))}</td></tr>"
            for r in listed.itertuples()
        )
        or "<tr><td colspan=6>No measure beyond |z| = 1.96 and no flag.</td></tr>"
    )
    warnings = [*_person_flags(profile, person, age, age_range), *map(str, notes)]
    warning_html = (
        '<div class="flags"><h3>Flags</h3><ul>'
        + "".join(f"<li>{esc(w)}</li>" for w in dict.fromkeys(warnings))
        + "</ul></div>"
        if warnings else "<p>No flags: age inside the training range, every level known.</p>"
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
.flags {{border-left: 4px solid #c0504d; padding: 0.2em 1em; background: #fbf1f0;}}
small {{color: #555;}}
</style></head><body>
<h1>Individual deviation report</h1>
<div class="cols"><div><h3>Person</h3><table>{cov}</table></div>
<div><h3>Model</h3><table>{model}</table></div></div>
{warning_html}
{dev}
<p>{int(profile["extreme"].sum())} of {len(profile)} measures have |z| &gt; 1.96
(about {0.05 * len(profile):.1f} expected by chance).</p>
<h3>Flagged measures</h3>
<table><tr><th>group</th><th>measure</th><th>value</th><th>centile</th><th>z</th>
<th>flags</th></tr>{rows}</table>
{plots}
<p><small>Centiles and z-scores from a normative model (normcore). A z beyond +-1.96 is
expected in 5% of healthy people per measure; it is a prompt to look, not a diagnosis.</small></p>
</body></html>"""
