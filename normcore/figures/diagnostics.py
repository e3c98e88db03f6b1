"""Plotly builders for the calibration and dependence diagnostics: tables in, figures out.

The dashboard's Diagnostics page and the HTML report (`normcore.report`) draw the same
figures from the tables of an `normcore.evaluate.EvaluationResult`, so a number seen in
the browser is the number in `metrics.json`. Each builder only aggregates what it shows
(means over IDPs, histogram counts via `normcore.metrics`); none of them touches a model.

Every figure shows what "calibrated" looks like next to the data: the uniform line with
the binomial sampling band for histograms, the diagonal with a Dvoretzky-Kiefer-Wolfowitz
band for QQ plots, zero with the sampling noise for coverage and centile errors, the KS
critical value for per-IDP KS, r = 1 for memorisation. Without that reference a reader
cannot tell a real miscalibration from the noise of a small test set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from scipy import stats

from normcore import metrics

__all__ = [
    "pit_histogram",
    "pit_qq",
    "coverage_curve",
    "ace_by_age",
    "ks_per_idp",
    "strata_heatmap",
    "deviation_histogram",
    "correlation_scatter",
    "joint_vs_product",
    "memorisation_histogram",
]

_MAIN = "#1f6f8b"
_FLAG = "#c0504d"
_REFERENCE = "#333333"
_BAND = "rgba(120,120,120,0.18)"
_LINES = ("#d98c2b", "#6a4c93", "#2a9d8f", "#b5517d", "#5c7c2a", "#8c6d46")
_FONT = {"family": "sans-serif", "size": 12, "color": "#1c2b36"}
_LEVEL = 0.95
"""Coverage of every sampling band drawn (95%)."""


def _layout(fig: go.Figure, title: str | None, x: str, y: str, height: int) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01} if title else None,
        template="plotly_white",
        height=height,
        margin={"l": 65, "r": 20, "t": 60 if title else 25, "b": 55},
        font=_FONT,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0.0},
        hovermode="closest",
        xaxis_title=x,
        yaxis_title=y,
    )
    return fig


def _band(
    fig: go.Figure,
    x: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    name: str,
    shape: str = "linear",
) -> None:
    """A shaded band between `low` and `high` (two traces: the upper edge, then the fill)."""
    fig.add_trace(
        go.Scatter(
            x=x,
            y=high,
            mode="lines",
            line={"width": 0, "shape": shape},
            hoverinfo="skip",
            showlegend=False,
            legendgroup=name,
            name=name,
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=low,
            mode="lines",
            line={"width": 0, "shape": shape},
            fill="tonexty",
            fillcolor=_BAND,
            hoverinfo="skip",
            name=name,
            legendgroup=name,
        )
    )


def _pooled_name(n_idps: int) -> str:
    return "1 IDP" if n_idps == 1 else f"all {n_idps} IDPs pooled"


def _step(edges: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x, y of a histogram outline for an "hv" line: each value held over its bin."""
    return edges, np.append(values, values[-1])


# --------------------------------------------------------------------------- PIT


def pit_histogram(
    pit: pd.DataFrame,
    show: Sequence[str] = (),
    bins: int = 20,
    title: str | None = "PIT histogram",
    height: int = 380,
) -> go.Figure:
    """Histogram of PIT values: all IDPs pooled (bars) and the IDPs in `show` (outlines).

    `pit` has one column per IDP (PIT values in [0, 1]) and nothing else. Uniform =
    calibrated: the dashed line at density 1, with the 95% binomial band of one IDP's
    histogram (n = people) around it. Pooled bars vary less
    than that band, but IDPs are correlated so the pooled n overstates the information.
    """
    values, columns = pit, [str(c) for c in pit.columns]
    table = metrics.pit_histogram(values, bins=bins, pooled=True)
    edges = np.linspace(0.0, 1.0, bins + 1)
    n = int(values.notna().sum().max()) if len(columns) else 0
    fig = go.Figure()
    if n:
        low, high = stats.binom.interval(_LEVEL, n, 1.0 / bins)
        width = 1.0 / bins
        _band(
            fig,
            np.array([0.0, 1.0]),
            np.full(2, low / (n * width)),
            np.full(2, high / (n * width)),
            f"95% band, one IDP (n={n})",
        )
    pooled = table[table["idp"] == metrics.POOLED]
    fig.add_trace(
        go.Bar(
            x=(pooled["bin_left"] + pooled["bin_right"]) / 2,
            y=pooled["density"],
            width=1.0 / bins,
            name=_pooled_name(len(columns)),
            marker={"color": _MAIN, "opacity": 0.55},
            customdata=pooled[["bin_left", "bin_right", "count"]],
            hovertemplate="PIT %{customdata[0]:.2f}-%{customdata[1]:.2f}<br>density %{y:.2f}"
            "<br>%{customdata[2]} values<extra></extra>",
        )
    )
    for k, idp in enumerate(show):
        one = table[table["idp"] == str(idp)]
        x, y = _step(edges, one["density"].to_numpy())
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                name=str(idp),
                line={"shape": "hv", "width": 2, "color": _LINES[k % len(_LINES)]},
                hovertemplate=f"{idp}<br>PIT %{{x:.2f}}<br>density %{{y:.2f}}<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[0.0, 1.0],
            y=[1.0, 1.0],
            mode="lines",
            name="uniform (calibrated)",
            line={"dash": "dash", "color": _REFERENCE},
            hoverinfo="skip",
        )
    )
    fig.update_xaxes(range=[0, 1])
    fig.update_layout(bargap=0)
    return _layout(fig, title, "PIT (model centile / 100)", "density", height)


def pit_qq(
    pit: pd.DataFrame,
    show: Sequence[str] = (),
    title: str | None = "QQ plot of PIT values against Uniform(0, 1)",
    height: int = 420,
) -> go.Figure:
    """Empirical PIT quantiles against uniform ones: pooled, and the IDPs in `show`.

    On the diagonal = calibrated. The grey band is the 95% Dvoretzky-Kiefer-Wolfowitz
    band of one IDP (|F_n - F| <= sqrt(ln(2 / 0.05) / 2n)). Below the diagonal at the
    left and above it at the right (an S) means the model's spread is too narrow.
    """
    values, columns = pit, [str(c) for c in pit.columns]
    table = metrics.pit_qq(values, pooled=True)
    n = int(values.notna().sum().max()) if len(columns) else 0
    u = np.linspace(0.0, 1.0, 101)
    fig = go.Figure()
    if n:
        eps = np.sqrt(np.log(2.0 / (1.0 - _LEVEL)) / (2.0 * n))
        _band(fig, u, np.clip(u - eps, 0, 1), np.clip(u + eps, 0, 1), f"95% band, one IDP (n={n})")
    fig.add_trace(
        go.Scatter(
            x=u,
            y=u,
            mode="lines",
            name="uniform (calibrated)",
            line={"dash": "dash", "color": _REFERENCE},
            hoverinfo="skip",
        )
    )
    pooled = table[table["idp"] == metrics.POOLED]
    fig.add_trace(
        go.Scatter(
            x=pooled["uniform"],
            y=pooled["empirical"],
            mode="lines",
            name=_pooled_name(len(columns)),
            line={"color": _MAIN, "width": 3},
            hovertemplate="uniform %{x:.2f}<br>PIT %{y:.3f}<extra></extra>",
        )
    )
    for k, idp in enumerate(show):
        one = table[table["idp"] == str(idp)]
        fig.add_trace(
            go.Scatter(
                x=one["uniform"],
                y=one["empirical"],
                mode="lines",
                name=str(idp),
                line={"color": _LINES[k % len(_LINES)], "width": 1.5},
                hovertemplate=f"{idp}<br>uniform %{{x:.2f}}<br>PIT %{{y:.3f}}<extra></extra>",
            )
        )
    fig.update_xaxes(range=[0, 1], constrain="domain")
    fig.update_yaxes(range=[0, 1], scaleanchor="x", scaleratio=1, constrain="domain")
    return _layout(fig, title, "Uniform(0, 1) quantile", "PIT quantile", height)


# ---------------------------------------------------------------------- coverage, ACE


def coverage_curve(
    coverage: pd.DataFrame,
    title: str | None = "Coverage of central intervals",
    height: int = 380,
) -> go.Figure:
    """Empirical minus nominal coverage against nominal level (`metrics.coverage` table).

    The line is the mean over IDPs, the shaded range the 10th-90th percentile of IDPs,
    and the grey band the 95% binomial noise of one IDP around 0. Below 0: intervals
    too narrow (over-confident); above: too wide.
    """
    by_level = coverage.groupby("nominal")
    nominal = np.asarray(list(by_level.groups), dtype=float)
    mean = by_level["error"].mean().to_numpy()
    low = by_level["error"].quantile(0.1).to_numpy()
    high = by_level["error"].quantile(0.9).to_numpy()
    n = float(coverage["n"].max()) if len(coverage) else 0.0
    fig = go.Figure()
    if n:
        noise = stats.norm.ppf(0.5 + _LEVEL / 2) * np.sqrt(nominal * (1 - nominal) / n)
        _band(fig, nominal, -noise, noise, f"95% sampling noise, one IDP (n={n:.0f})")
    fig.add_trace(
        go.Scatter(
            x=nominal,
            y=high,
            mode="lines",
            line={"width": 0},
            hoverinfo="skip",
            showlegend=False,
            legendgroup="spread",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=nominal,
            y=low,
            mode="lines",
            line={"width": 0},
            fill="tonexty",
            fillcolor="rgba(31,111,139,0.18)",
            name="IDPs, 10th-90th percentile",
            legendgroup="spread",
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=nominal,
            y=mean,
            mode="lines+markers",
            name="mean over IDPs",
            line={"color": _MAIN, "width": 3},
            hovertemplate="nominal %{x:.2f}<br>empirical - nominal %{y:+.3f}<extra></extra>",
        )
    )
    fig.add_hline(y=0.0, line={"dash": "dash", "color": _REFERENCE})
    return _layout(fig, title, "nominal coverage", "empirical - nominal coverage", height)


def ace_by_age(
    ace: pd.DataFrame,
    title: str | None = "Absolute centile error by age",
    height: int = 380,
) -> go.Figure:
    """Mean |empirical - nominal| per age bin (`metrics.ace` table), per quantile and overall.

    The dashed line is what a perfectly calibrated model scores from sampling noise
    alone in that bin (mean absolute deviation of a binomial fraction,
    sqrt(2 q (1 - q) / (pi n)), averaged over the quantiles).
    """
    table = ace.assign(abs_error=ace["error"].abs())
    bins = table.groupby("age_bin").agg(
        age_low=("age_low", "first"),
        age_high=("age_high", "first"),
        n=("n", "max"),
        ace=("abs_error", "mean"),
    )
    labels = [f"{lo:.4g}-{hi:.4g}" for lo, hi in zip(bins["age_low"], bins["age_high"])]
    qs = np.sort(table["quantile"].unique())
    floor = [float(np.mean(np.sqrt(2 * qs * (1 - qs) / (np.pi * n)))) for n in bins["n"]]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=labels,
            y=bins["ace"],
            name="ACE (all quantiles)",
            marker={"color": _MAIN, "opacity": 0.55},
            customdata=bins[["n"]],
            hovertemplate="age %{x}<br>ACE %{y:.3f}<br>n = %{customdata[0]}<extra></extra>",
        )
    )
    for k, q in enumerate(qs):
        per_q = table[table["quantile"] == q].groupby("age_bin")["abs_error"].mean()
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=per_q.reindex(bins.index).to_numpy(),
                mode="lines+markers",
                name=f"q = {q:g}",
                line={"color": _LINES[k % len(_LINES)], "width": 1.5},
                hovertemplate=f"q = {q:g}<br>age %{{x}}<br>|error| %{{y:.3f}}<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=floor,
            mode="lines",
            name="noise floor (calibrated)",
            line={"dash": "dash", "color": _REFERENCE},
            hoverinfo="skip",
        )
    )
    return _layout(fig, title, "age bin (years)", "mean |empirical - nominal|", height)


# --------------------------------------------------------------------------- KS


def ks_per_idp(
    ks: pd.DataFrame,
    max_idps: int = 40,
    title: str | None = "KS distance of each IDP's PIT values from uniform",
    height: int | None = None,
) -> go.Figure:
    """Horizontal bars of the KS statistic per IDP, worst first (at most `max_idps`).

    `ks` has columns idp, n, statistic and optionally flagged (BH-adjusted p < 0.05,
    drawn in red). The dashed line is the 5% critical value of one test at the median n,
    ~1.36 / sqrt(n): bars beyond it are unlikely under calibration.
    """
    shown = ks.sort_values("statistic", ascending=False).head(max_idps).iloc[::-1]
    flagged = (
        shown["flagged"].to_numpy(dtype=bool)
        if "flagged" in shown
        else np.zeros(len(shown), dtype=bool)
    )
    colors = np.where(flagged, _FLAG, _MAIN)
    p = shown["p_adjusted"] if "p_adjusted" in shown else shown["p_value"]
    fig = go.Figure(
        go.Bar(
            x=shown["statistic"],
            y=shown["idp"].astype(str),
            orientation="h",
            marker={"color": colors},
            customdata=np.column_stack([shown["n"], p]),
            name="KS statistic",
            hovertemplate="%{y}<br>KS %{x:.3f}<br>n = %{customdata[0]}"
            "<br>p (BH) = %{customdata[1]:.2g}<extra></extra>",
        )
    )
    if len(ks):
        n = float(ks["n"].median())
        critical = stats.kstwo.ppf(1 - 0.05, int(n)) if n >= 1 else np.nan
        fig.add_vline(
            x=critical,
            line={"dash": "dash", "color": _REFERENCE},
            annotation_text="5% critical value",
            annotation_position="top right",
        )
    height = height or max(260, 40 + 18 * len(shown))
    suffix = f" (worst {max_idps} of {len(ks)})" if len(ks) > max_idps else ""
    fig = _layout(fig, (title + suffix) if title else None, "KS statistic", "", height)
    fig.update_layout(showlegend=False)
    return fig


# ----------------------------------------------------------------------- strata


def _label_order(labels: pd.Index) -> pd.Index:
    """Sort key: age bands ("5-10", "10-20", ...) by their lower edge, other labels as text."""
    lower = pd.to_numeric(labels.astype(str).str.split("-").str[0], errors="coerce")
    if lower.notna().all():
        return pd.Index(lower)
    return labels.astype(str)


def strata_heatmap(
    strata: pd.DataFrame,
    rows: str = "site",
    columns: str = "sex",
    value: str = "ks_mean",
    title: str | None = None,
    height: int | None = None,
) -> go.Figure:
    """Heatmap of one calibration metric per stratum of `rows` x `columns`.

    `strata` is the stacked per-stratum table of `evaluate` (a ``by`` column naming each
    grouping); the cells of the `rows` x `columns` grouping are drawn, strata too small to
    judge are blank, and miscalibrated ones (BH-adjusted p < 0.05) are marked with "*".
    """
    wanted = {f"{rows} x {columns}", f"{columns} x {rows}"}
    cells = strata[strata["by"].isin(wanted)]
    grid = cells.pivot(index=rows, columns=columns, values=value)
    flags = cells.pivot(index=rows, columns=columns, values="miscalibrated")
    counts = cells.pivot(index=rows, columns=columns, values="n")
    grid = grid.sort_index(key=_label_order).sort_index(axis=1, key=_label_order)
    flags = flags.reindex_like(grid).fillna(False).astype(bool)
    counts = counts.reindex_like(grid)
    text = [
        [("" if pd.isna(v) else f"{v:.2f}") + ("*" if f else "") for v, f in zip(vr, fr)]
        for vr, fr in zip(grid.to_numpy(), flags.to_numpy())
    ]
    diverging = value == "coverage95_error"
    finite = grid.to_numpy(dtype=float)[np.isfinite(grid.to_numpy(dtype=float))]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0  # colour scale from 0
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(dtype=float),
            x=[str(c) for c in grid.columns],
            y=[str(r) for r in grid.index],
            text=text,
            texttemplate="%{text}",
            customdata=counts.to_numpy(dtype=float),
            colorscale="RdBu" if diverging else "Reds",
            zmid=0.0 if diverging else None,
            zmin=None if diverging else 0.0,
            zmax=None if diverging else top,
            colorbar={"title": {"text": value}},
            hovertemplate=f"{rows} %{{y}}<br>{columns} %{{x}}<br>{value} %{{z:.3f}}"
            "<br>n = %{customdata}<extra></extra>",
        )
    )
    height = height or max(260, 80 + 24 * len(grid))
    title = title if title is not None else f"Calibration per stratum ({value}; * = miscalibrated)"
    fig = _layout(fig, title, columns, rows, height)
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    return fig


# ---------------------------------------------------------------------- deviation


def deviation_histogram(
    deviation: pd.DataFrame,
    bins: int = 20,
    title: str | None = "Multivariate deviation centiles",
    height: int = 360,
) -> go.Figure:
    """Histogram of the per-person multivariate deviation centile (`model.deviation`).

    For held-out controls it should be uniform: the dashed line with its 95% binomial
    band. A pile-up at the right means profiles look more unusual than the model expects.
    """
    pit = (deviation["deviation_centile"].to_numpy(dtype=float) / 100.0).clip(0.0, 1.0)
    fig = pit_histogram(pd.DataFrame({"deviation": pit}), bins=bins, title=title, height=height)
    fig.update_traces(selector={"type": "bar"}, name="people")
    fig.update_xaxes(title_text="deviation centile / 100")
    return fig


# --------------------------------------------------------------------- dependence


def correlation_scatter(
    correlations: pd.DataFrame,
    method: str = "pearson",
    max_points: int = 5000,
    title: str | None = None,
    height: int = 420,
) -> go.Figure:
    """Real against model correlation of every IDP pair (off-diagonal entries).

    On the diagonal = the model reproduces the dependence. A model with independent IDPs
    would put every point on the horizontal line at 0. At most `max_points` pairs are
    drawn (a fixed subset) to keep the page light; the title's error uses all of them.
    """
    real, model = correlations[f"real_{method}"], correlations[f"model_{method}"]
    error = float(np.mean(np.abs(real - model))) if len(correlations) else float("nan")
    shown = correlations
    if len(shown) > max_points:
        shown = shown.sample(max_points, random_state=0)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[-1, 1],
            y=[-1, 1],
            mode="lines",
            name="model = real",
            line={"dash": "dash", "color": _REFERENCE},
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scattergl(
            x=shown[f"real_{method}"],
            y=shown[f"model_{method}"],
            mode="markers",
            name="IDP pairs",
            marker={"color": _MAIN, "size": 5, "opacity": 0.5},
            customdata=shown[["idp_a", "idp_b"]].astype(str),
            hovertemplate="%{customdata[0]} / %{customdata[1]}<br>real r %{x:.2f}"
            "<br>model r %{y:.2f}<extra></extra>",
        )
    )
    title = (
        title
        if title is not None
        else (f"Correlations of IDP pairs, {method} (mean |real - model| = {error:.3f})")
    )
    fig = _layout(fig, title, f"real {method} correlation", f"model {method} correlation", height)
    fig.update_xaxes(range=[-1, 1], constrain="domain")
    fig.update_yaxes(range=[-1, 1], scaleanchor="x", scaleratio=1, constrain="domain")
    return fig


def joint_vs_product(
    dependence: pd.DataFrame,
    title: str | None = "Joint vs independent: energy distance per IDP pair",
    height: int = 420,
) -> go.Figure:
    """Per IDP pair, energy distance of the model's joint samples vs its independent version.

    `dependence` is `metrics.pairwise_dependence`. Points below the diagonal: the model's
    joint pairs are closer to the real pairs than its own marginals resampled
    independently, i.e. it learned that pair's dependence.
    """
    better = dependence["joint_better"].to_numpy(dtype=bool)
    top = (
        float(np.nanmax(dependence[["energy_joint", "energy_product"]].to_numpy()))
        if len(dependence)
        else 1.0
    )
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, top],
            y=[0, top],
            mode="lines",
            name="no gain from dependence",
            line={"dash": "dash", "color": _REFERENCE},
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=dependence["energy_product"],
            y=dependence["energy_joint"],
            mode="markers",
            name=f"IDP pairs ({better.mean():.0%} joint better)" if len(better) else "IDP pairs",
            marker={"color": np.where(better, _MAIN, _FLAG), "size": 7},
            customdata=dependence[["idp_a", "idp_b"]].astype(str),
            hovertemplate="%{customdata[0]} / %{customdata[1]}<br>independent %{x:.3f}"
            "<br>joint %{y:.3f}<extra></extra>",
        )
    )
    return _layout(
        fig, title, "energy distance, independent marginals", "energy distance, model joint", height
    )


# -------------------------------------------------------------------- memorisation


def memorisation_histogram(
    r: np.ndarray | Sequence[float],
    bins: int = 40,
    title: str | None = None,
    height: int = 360,
) -> go.Figure:
    """Histogram of r = d(nearest training row) / d(nearest held-out row) per sample.

    Centred on r = 1 (dashed) with P(r < 1) ~ 0.5: the samples are no closer to the
    training people than to unseen ones. Mass piled near 0: copies of training rows.
    """
    r = np.asarray(r, dtype=float)
    r = r[np.isfinite(r)]
    share = float(np.mean(r < 1)) if r.size else float("nan")
    fig = go.Figure(
        go.Histogram(
            x=r,
            nbinsx=bins,
            name="generated rows",
            marker={"color": _MAIN, "opacity": 0.7},
            hovertemplate="r %{x}<br>%{y} rows<extra></extra>",
        )
    )
    fig.add_vline(
        x=1.0,
        line={"dash": "dash", "color": _REFERENCE},
        annotation_text="r = 1",
        annotation_position="top right",
    )
    title = title if title is not None else f"Memorisation ratio (P(r < 1) = {share:.2f})"
    return _layout(fig, title, "r = d(train) / d(held-out)", "generated rows", height)
