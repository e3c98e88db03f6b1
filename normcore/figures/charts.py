"""Plotly builders for the dashboard's charts: tables in, `go.Figure` out.

They compute nothing about the model: every number arrives in a table (centiles from
`NormativeModel.centiles`, scores from `score`, samples from `sample`, summaries from
`normcore.explore`). Keeping them pure lets the dashboard, the HTML reports and the tests
share one drawing of each chart, and lets a test check a figure's data without a browser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from normcore.idp_groups import GROUP_ORDER, label, region_group
from normcore.units import axis_title, tick_format

__all__ = [
    "FAN_QUANTILES",
    "centile_fan",
    "fan_small_multiples",
    "dependence_contours",
    "correlation_heatmaps",
    "pair_correlation_by_age",
    "deviation_profile",
    "cohort_z_heatmap",
    "extreme_rates",
    "loss_curve",
    "IMPUTED_LABEL",
    "profile_comparison",
    "joint_draws_over_fans",
]

#: The bands a clinician reads: 2-98 (about +-2 SD), 10-90, 25-75, and the median.
FAN_QUANTILES: tuple[float, ...] = (0.02, 0.10, 0.25, 0.50, 0.75, 0.90, 0.98)

_BAND_FILL = ("rgba(31,111,139,0.12)", "rgba(31,111,139,0.20)", "rgba(31,111,139,0.30)")
_MEDIAN = "#1f6f8b"
_POINTS = "#c0504d"
_TRUTH = "#333333"
_OUTSIDE = "rgba(120,120,120,0.13)"
_SPARSE = "rgba(232,163,61,0.14)"
_UNSEEN_SITE = "rgba(160,60,140,0.10)"
_RUG = "rgba(28,43,54,0.55)"
#: Room below the data for the rug of reference ages, as a share of the y range.
_RUG_ROOM = 0.08
#: Pixels per IDP of a deviation profile: every label stays readable at 150 IDPs.
_PROFILE_ROW_PX = 20
_FLAG = "#c0504d"
_OK = "#1f6f8b"
_Z_FLAG = 1.96
_MAX_ERROR_BARS = 40
_FONT = {"family": "sans-serif", "size": 12, "color": "#1c2b36"}


def _layout(fig: go.Figure, title: str | None, height: int) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01} if title else None,
        template="plotly_white",
        height=height,
        margin={"l": 60, "r": 20, "t": 50 if title else 30, "b": 90},
        font=_FONT,
        # Below the plot area, in container coordinates: never over titles or panels.
        legend={"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.0, "x": 0.0},
        hovermode="closest",
    )
    return fig


def _wide(centiles: pd.DataFrame, idp: str, age: str) -> pd.DataFrame:
    """Ages x quantiles for one IDP from the long `centiles` table."""
    one = centiles[centiles["idp"] == idp]
    if one.empty:
        raise ValueError(f"the centile table has no rows for IDP '{idp}'")
    # groupby-unstack, not pivot_table: the same table (duplicates averaged) at a fifth of
    # the cost, which every fan panel of every page run pays.
    return one.groupby([age, "quantile"])["value"].mean().unstack()


def _add_fan(
    fig: go.Figure,
    wide: pd.DataFrame,
    row: int | None,
    col: int | None,
    show_legend: bool,
) -> None:
    """Bands as filled areas between symmetric quantile pairs, median as a line."""
    ages = wide.index.to_numpy(dtype=float)
    qs = sorted(float(q) for q in wide.columns)
    pairs = [(lo, hi) for lo, hi in zip(qs, reversed(qs)) if lo < hi]
    where = {"row": row, "col": col} if row is not None else {}
    for k, (lo, hi) in enumerate(pairs):
        fill = _BAND_FILL[min(k, len(_BAND_FILL) - 1)]
        name = f"{100 * lo:g}-{100 * hi:g}th centile"
        fig.add_trace(
            go.Scatter(
                x=ages,
                y=wide[hi],
                mode="lines",
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                legendgroup=name,
            ),
            **where,
        )
        fig.add_trace(
            go.Scatter(
                x=ages,
                y=wide[lo],
                mode="lines",
                line={"width": 0},
                fill="tonexty",
                fillcolor=fill,
                name=name,
                legendgroup=name,
                showlegend=show_legend,
                hoverinfo="skip",
            ),
            **where,
        )
    if 0.5 in wide.columns:
        fig.add_trace(
            go.Scatter(
                x=ages,
                y=wide[0.5],
                mode="lines",
                line={"color": _MEDIAN, "width": 2},
                name="median",
                legendgroup="median",
                showlegend=show_legend,
                hovertemplate="age %{x:.1f}<br>median %{y:.4g}<extra></extra>",
            ),
            **where,
        )


def _add_points(
    fig: go.Figure,
    points: pd.DataFrame,
    row: int | None,
    col: int | None,
    show_legend: bool,
    name: str,
    color: str,
    size: int,
) -> None:
    """People as dots; hover says who, age, value and centile (columns age, value, centile)."""
    where = {"row": row, "col": col} if row is not None else {}
    who = (
        points["label"].astype(str) if "label" in points.columns else pd.Series([""] * len(points))
    )
    custom = np.column_stack([points["centile"].to_numpy(dtype=float), who.to_numpy(dtype=object)])
    fig.add_trace(
        go.Scatter(
            x=points["age"],
            y=points["value"],
            mode="markers",
            name=name,
            legendgroup=name,
            showlegend=show_legend,
            marker={
                "color": color,
                "size": size,
                "opacity": 0.75,
                "line": {"width": 0.5, "color": "white"},
            },
            customdata=custom,
            hovertemplate="%{customdata[1]}<br>age %{x:.1f}<br>value %{y:.4g}"
            "<br>centile %{customdata[0]:.1f}<extra></extra>",
        ),
        **where,
    )


def _span(
    fig: go.Figure, x0: float, x1: float, color: str, name: str, row: int | None, col: int | None
) -> dict:
    """An age span shaded over the full height of one panel, as a layout shape (what
    `fig.add_vrect` draws). Figures collect their spans and set them once with
    `_add_shapes`: plotly's add_vrect re-reads every subplot and shape on each call, so a
    grid of fans with a few spans each took over a second to build."""
    xref, yref = "x", "y"
    if row is not None:
        panel = fig.get_subplot(row, col)
        xref = panel.xaxis.plotly_name.replace("axis", "")
        yref = panel.yaxis.plotly_name.replace("axis", "")
    return {
        "type": "rect", "xref": xref, "yref": f"{yref} domain", "x0": x0, "x1": x1,
        "y0": 0, "y1": 1, "fillcolor": color, "line": {"width": 0}, "layer": "below",
        "name": name,
    }  # fmt: skip


def _add_shapes(fig: go.Figure, shapes: Sequence[dict]) -> None:
    """Append layout shapes in one assignment (validated once, not once per shape)."""
    if shapes:
        fig.layout.shapes = (*fig.layout.shapes, *shapes)


def _outside(
    fig: go.Figure,
    age_range: Sequence[float],
    x_range: Sequence[float],
    row: int | None,
    col: int | None,
    color: str = _OUTSIDE,
    name: str = "outside the training ages",
) -> list[dict]:
    """Shading of the ages outside `age_range` (the training ages, or an adapted site's
    controls' ages): centiles there are extrapolated."""
    lo, hi = float(age_range[0]), float(age_range[1])
    x0, x1 = float(x_range[0]), float(x_range[1])
    return [_span(fig, a, b, color, name, row, col) for a, b in ((x0, lo), (hi, x1)) if b > a]


def _sparse(
    fig: go.Figure, spans: Sequence[Sequence[float]], row: int | None, col: int | None
) -> list[dict]:
    """Shading of age spans where reference people are few (`explore.sparse_age_spans`)."""
    return [
        _span(fig, float(a), float(b), _SPARSE, "few reference people", row, col)
        for a, b in spans
    ]


def _add_rug(
    fig: go.Figure,
    ages: Sequence[float],
    y: float,
    row: int | None,
    col: int | None,
    show_legend: bool,
) -> None:
    """The reference people's ages as ticks along the bottom of the panel: where they
    are dense, the centiles rest on many people; where they thin out, on few."""
    where = {"row": row, "col": col} if row is not None else {}
    ages = np.asarray(ages, dtype=float)
    fig.add_trace(
        go.Scatter(
            x=ages,
            y=np.full(len(ages), y),
            mode="markers",
            marker={"symbol": "line-ns-open", "size": 9, "color": _RUG, "line": {"width": 1}},
            name="reference people's ages",
            legendgroup="rug",
            showlegend=show_legend,
            hovertemplate="reference person aged %{x:.1f}<extra></extra>",
        ),
        **where,
    )


def _y_range(
    wide: pd.DataFrame,
    age_range: Sequence[float] | None,
    *extra: pd.DataFrame | None,
    rug: bool = False,
) -> list[float]:
    """The y range a fan is drawn over: its bands within the training ages and the
    people shown, padded, never bands that explode where the model extrapolates."""
    inside = wide
    if age_range is not None:
        ages = wide.index.to_numpy(dtype=float)
        keep = (ages >= float(age_range[0])) & (ages <= float(age_range[1]))
        inside = wide[keep] if keep.any() else wide
    values = [inside.to_numpy(dtype=float).ravel()]
    values += [e["value"].to_numpy(dtype=float) for e in extra if e is not None and len(e)]
    found = np.concatenate(values)
    found = found[np.isfinite(found)]
    lo, hi = (float(found.min()), float(found.max())) if found.size else (0.0, 1.0)
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
    bottom = lo - pad - (_RUG_ROOM * (hi - lo) if rug else 0.0)
    return [bottom, hi + pad]


def _panel_extras(
    fig: go.Figure,
    wide: pd.DataFrame,
    idp: str,
    row: int | None,
    col: int | None,
    first: bool,
    age_range: Sequence[float] | None,
    site_age_range: Sequence[float] | None,
    reference_ages: Sequence[float] | None,
    sparse_spans: Sequence[Sequence[float]] | None,
    shown: Sequence[pd.DataFrame | None],
) -> list[dict]:
    """What every fan panel carries besides its bands: the rug, the unit on the y axis
    and a y range clipped to the data, all added to `fig`; and the shading of the
    training ages, of an adapted site's controls' ages and of sparse reference ages,
    returned as shapes for `_add_shapes`."""
    x_range = (wide.index.min(), wide.index.max())
    shapes = []
    if age_range is not None:
        shapes += _outside(fig, age_range, x_range, row, col)
    if site_age_range is not None:
        shapes += _outside(
            fig, site_age_range, x_range, row, col, _UNSEEN_SITE, "outside the site's controls"
        )
    if sparse_spans:
        shapes += _sparse(fig, sparse_spans, row, col)
    has_rug = reference_ages is not None and len(reference_ages) > 0
    y_range = _y_range(wide, age_range, *shown, rug=has_rug)
    if has_rug:
        _add_rug(fig, reference_ages, y_range[0] + 0.02 * (y_range[1] - y_range[0]), row, col,
                 first)
    where = {"row": row, "col": col} if row is not None else {}
    fig.update_yaxes(
        title_text=axis_title(idp, label(idp)), tickformat=tick_format(idp), range=y_range,
        **where,
    )
    return shapes


def centile_fan(
    centiles: pd.DataFrame,
    idp: str,
    age: str = "age",
    points: pd.DataFrame | None = None,
    age_range: Sequence[float] | None = None,
    truth: pd.DataFrame | None = None,
    highlight: pd.DataFrame | None = None,
    title: str | None = None,
    points_name: str = "people",
    height: int = 420,
    site_age_range: Sequence[float] | None = None,
    reference_ages: Sequence[float] | None = None,
    sparse_spans: Sequence[Sequence[float]] | None = None,
) -> go.Figure:
    """Age-conditioned centile bands of one IDP.

    `centiles`: long table (age column, idp, quantile, value) over an age grid.
    `points`: optional people (age, value, centile, optional label). `age_range`: the
    training ages; the rest of the x axis is shaded. `truth`: optional exact centiles in
    the same long layout, drawn dashed (the Teach page). `highlight`: one or a few
    people drawn large (the Individual page). `site_age_range`: an adapted site's
    controls' ages, shaded outside. `reference_ages`: the reference people's ages, drawn
    as a rug; `sparse_spans`: age spans where they are few, shaded
    (`explore.sparse_age_spans`). The y axis carries the IDP's unit and is clipped to the
    bands inside the training ages and the people shown.
    """
    wide = _wide(centiles, idp, age)
    fig = go.Figure()
    _add_fan(fig, wide, None, None, True)
    if truth is not None:
        _add_truth(fig, _wide(truth, idp, age), None, None, True)
    if points is not None and len(points):
        _add_points(fig, points, None, None, True, points_name, _POINTS, 6)
    if highlight is not None and len(highlight):
        _add_points(fig, highlight, None, None, True, "this person", "#e8a33d", 14)
    shapes = _panel_extras(
        fig, wide, idp, None, None, True, age_range, site_age_range, reference_ages,
        sparse_spans, (points, highlight),
    )
    _add_shapes(fig, shapes)
    fig.update_xaxes(title_text="age (years)")
    return _layout(fig, title if title is not None else label(idp), height)


def _add_truth(
    fig: go.Figure, wide: pd.DataFrame, row: int | None, col: int | None, show_legend: bool
) -> None:
    where = {"row": row, "col": col} if row is not None else {}
    for k, q in enumerate(sorted(wide.columns)):
        fig.add_trace(
            go.Scatter(
                x=wide.index,
                y=wide[q],
                mode="lines",
                line={"color": _TRUTH, "width": 1.2, "dash": "dash"},
                name="true centiles",
                legendgroup="truth",
                showlegend=show_legend and k == 0,
                hovertemplate=f"true {100 * q:g}th: %{{y:.4g}}<extra></extra>",
            ),
            **where,
        )


def fan_small_multiples(
    centiles: pd.DataFrame,
    idps: Sequence[str],
    age: str = "age",
    points: pd.DataFrame | None = None,
    age_range: Sequence[float] | None = None,
    truth: pd.DataFrame | None = None,
    columns: int = 2,
    points_name: str = "people",
    panel_height: int = 300,
    site_age_range: Sequence[float] | None = None,
    reference_ages: Sequence[float] | None = None,
    sparse_spans: Sequence[Sequence[float]] | None = None,
) -> go.Figure:
    """One fan per IDP on a grid; `points` and `truth` carry an `idp` column to split on.
    The other arguments are `centile_fan`'s, applied to every panel."""
    if not idps:
        raise ValueError("choose at least one IDP")
    cols = max(1, min(columns, len(idps)))
    rows = int(np.ceil(len(idps) / cols))
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[label(i) for i in idps],
        horizontal_spacing=0.08,
        vertical_spacing=0.12 if rows > 1 else 0.0,
    )
    shapes: list[dict] = []
    for k, idp in enumerate(idps):
        r, c = k // cols + 1, k % cols + 1
        wide = _wide(centiles, idp, age)
        _add_fan(fig, wide, r, c, k == 0)
        if truth is not None:
            _add_truth(fig, _wide(truth, idp, age), r, c, k == 0)
        mine = points[points["idp"] == idp] if points is not None else None
        if mine is not None and len(mine):
            _add_points(fig, mine, r, c, k == 0, points_name, _POINTS, 5)
        shapes += _panel_extras(
            fig, wide, idp, r, c, k == 0, age_range, site_age_range, reference_ages,
            sparse_spans, (mine,),
        )
        fig.update_xaxes(title_text="age (years)" if r == rows else None, row=r, col=c)
    _add_shapes(fig, shapes)
    return _layout(fig, None, panel_height * rows + 60)


def dependence_contours(
    samples: pd.DataFrame,
    real: pd.DataFrame | None,
    x: str,
    y: str,
    title: str | None = None,
    height: int = 460,
) -> go.Figure:
    """Density contours of model samples of (x, y), with real people as dots on top."""
    fig = go.Figure()
    fig.add_trace(
        go.Histogram2dContour(
            x=samples[x],
            y=samples[y],
            colorscale="Blues",
            reversescale=False,
            contours={"coloring": "fill", "showlines": True},
            ncontours=12,
            showscale=False,
            name="model samples",
            hoverinfo="skip",
            opacity=0.85,
        )
    )
    if real is not None and len(real):
        fig.add_trace(
            go.Scatter(
                x=real[x],
                y=real[y],
                mode="markers",
                name="real people",
                marker={"color": _POINTS, "size": 6, "line": {"width": 0.5, "color": "white"}},
                hovertemplate=f"{label(x)} %{{x:.4g}}<br>{label(y)} %{{y:.4g}}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text=axis_title(x, label(x)), tickformat=tick_format(x))
    fig.update_yaxes(title_text=axis_title(y, label(y)), tickformat=tick_format(y))
    return _layout(fig, title, height)


def correlation_heatmaps(real: pd.DataFrame, model: pd.DataFrame, height: int = 460) -> go.Figure:
    """Real and model correlation matrices side by side (same IDP order, same colour scale)."""
    names = [label(c) for c in real.columns]
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["real people", "model samples"], horizontal_spacing=0.12
    )
    for k, mat in enumerate((real, model)):
        fig.add_trace(
            go.Heatmap(
                z=mat.to_numpy(dtype=float),
                x=names,
                y=names,
                zmin=-1,
                zmax=1,
                colorscale="RdBu",
                reversescale=True,
                showscale=k == 1,
                hovertemplate="%{y} / %{x}: r = %{z:.2f}<extra></extra>",
            ),
            row=1,
            col=k + 1,
        )
        fig.update_yaxes(autorange="reversed", row=1, col=k + 1)
    fig.update_xaxes(tickangle=45)
    return _layout(fig, None, height)


def pair_correlation_by_age(
    table: pd.DataFrame, title: str | None = None, height: int = 360
) -> go.Figure:
    """Correlation of one IDP pair across age: columns age, source, r (and optional n)."""
    fig = go.Figure()
    styles = {
        "model": {"color": _MEDIAN, "dash": "solid"},
        "real": {"color": _POINTS, "dash": "dot"},
    }
    for source, part in table.groupby("source", sort=False):
        part = part.sort_values("age")
        fig.add_trace(
            go.Scatter(
                x=part["age"],
                y=part["r"],
                mode="lines+markers",
                name=str(source),
                line=styles.get(str(source), {}),
                hovertemplate="age %{x:.1f}<br>r = %{y:.2f}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="age (years)")
    fig.update_yaxes(title_text="correlation", range=[-1, 1])
    return _layout(fig, title, height)


def deviation_profile(
    scores: pd.DataFrame, threshold: float = _Z_FLAG, height: int | None = None
) -> go.Figure:
    """One person's z per IDP as horizontal bars, one labelled row per IDP, grouped by
    region type (a two-level axis: group, then IDP); |z| > threshold in red.

    `scores`: the person's rows of `NormativeModel.score` (idp, z, centile, value), or
    `explore.person_profile`'s table, whose `z_lo`/`z_hi` (the z interval from the
    centile's Monte-Carlo error) are drawn as interval bars. The figure grows
    `_PROFILE_ROW_PX` per IDP, so 150 labels stay readable; the page scrolls it.
    """
    cols = ["idp", "z", "centile", "value", *[c for c in ("z_lo", "z_hi") if c in scores]]
    df = scores[cols].copy()
    df["group"] = [region_group(i) for i in df["idp"]]
    order = {g: k for k, g in enumerate(GROUP_ORDER)}
    df["order"] = df["group"].map(order)
    df = df.sort_values(["order"], kind="stable").reset_index(drop=True)
    flag = df["z"].abs() > threshold
    error = None
    if "z_lo" in df and "z_hi" in df:
        error = {
            "type": "data",
            "symmetric": False,
            "array": (df["z_hi"] - df["z"]).clip(lower=0).to_numpy(dtype=float),
            "arrayminus": (df["z"] - df["z_lo"]).clip(lower=0).to_numpy(dtype=float),
            "color": "#333",
            "thickness": 1.2,
            "width": 4,
            "visible": True,
        }
    fig = go.Figure(
        go.Bar(
            orientation="h",
            y=[df["group"].tolist(), [label(i) for i in df["idp"]]],
            x=df["z"],
            marker_color=[_FLAG if f else _OK for f in flag],
            error_x=error,
            customdata=np.column_stack([df["centile"], df["value"], df["idp"]]),
            hovertemplate="%{customdata[2]}<br>z = %{x:.2f}<br>centile %{customdata[0]:.1f}"
            "<br>value %{customdata[1]:,.4~f}<extra></extra>",
            showlegend=False,
        )
    )
    fig.add_vrect(x0=-threshold, x1=threshold, fillcolor="rgba(31,111,139,0.07)", line_width=0,
                  layer="below")
    for t in (-threshold, threshold):
        fig.add_vline(x=t, line={"color": "#888", "dash": "dot", "width": 1})
    reach = float(np.nanmax(np.abs(np.r_[df["z"], df.get("z_lo", []), df.get("z_hi", [])])))
    limit = max(3.0, min(6.5, reach + 0.3)) if np.isfinite(reach) else 3.0
    fig.update_xaxes(
        title_text="z (standard deviations from the norm for age, sex and site)",
        range=[-limit, limit], zeroline=True, side="top",
    )
    fig.update_yaxes(autorange="reversed", automargin=True, dtick=1, tickfont={"size": 11})
    rows = height or 140 + _PROFILE_ROW_PX * len(df)
    return _layout(fig, None, rows)


def cohort_z_heatmap(z: pd.DataFrame, height: int | None = None) -> go.Figure:
    """People (rows) x IDPs (columns) of z, diverging colours clipped at +-3."""
    fig = go.Figure(
        go.Heatmap(
            z=z.to_numpy(dtype=float),
            x=[label(c) for c in z.columns],
            y=[str(i) for i in z.index],
            zmin=-3,
            zmax=3,
            colorscale="RdBu",
            reversescale=True,
            colorbar={"title": {"text": "z"}},
            hovertemplate="%{y}<br>%{x}<br>z = %{z:.2f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", showticklabels=len(z) <= 60)
    fig.update_xaxes(showticklabels=z.shape[1] <= 60, tickangle=60)
    return _layout(fig, None, height or min(900, 200 + 8 * len(z)))


def extreme_rates(rates: pd.DataFrame, expected: float = 0.05, height: int = 420) -> go.Figure:
    """Observed fraction of |z| > 1.96 per IDP (with interval) against the expected rate.

    `rates`: columns idp, rate, lo, hi (from `normcore.explore.extreme_rates`).
    """
    # Sorted worst first; with many IDPs the intervals move into the hover, since 200
    # error bars side by side read as a grey fence.
    df = rates.sort_values("rate", ascending=False, kind="stable").reset_index(drop=True)
    outside = (df["lo"] > expected) | (df["hi"] < expected)
    bars = len(df) <= _MAX_ERROR_BARS
    fig = go.Figure(
        go.Bar(
            x=[label(i) for i in df["idp"]],
            y=df["rate"],
            marker_color=[_FLAG if o else _OK for o in outside],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": df["hi"] - df["rate"],
                "arrayminus": df["rate"] - df["lo"],
                "color": "#666",
                "thickness": 1,
                "visible": bars,
            },
            customdata=np.column_stack([df["lo"], df["hi"]]),
            hovertemplate="%{x}<br>%{y:.1%} extreme (95% interval %{customdata[0]:.1%}"
            "-%{customdata[1]:.1%})<extra></extra>",
            name="observed",
        )
    )
    fig.add_hline(
        y=expected,
        line={"color": "#333", "dash": "dash"},
        annotation_text=f"expected {expected:.0%}",
        annotation_position="top left",
    )
    fig.update_yaxes(title_text="fraction with |z| > 1.96", tickformat=".0%")
    fig.update_xaxes(showticklabels=len(df) <= 60, tickangle=60)
    return _layout(fig, None, height)


def loss_curve(
    history: Sequence[Mapping[str, float]], height: int = 300, kept: int | None = None
) -> go.Figure:
    """Training and validation loss per epoch (the Model page's live chart).

    `kept`: the index in `history` of the weights the model kept (the best validation
    loss, `explore.kept_weights`), marked with a ring and a line."""
    df = pd.DataFrame(list(history))
    fig = go.Figure()
    for key, name, style in (
        ("loss", "training", {"color": _MEDIAN}),
        ("val_loss", "validation", {"color": _POINTS, "dash": "dot"}),
    ):
        if key in df.columns and df[key].notna().any():
            fig.add_trace(go.Scatter(x=df["epoch"], y=df[key], mode="lines", name=name, line=style))
    if kept is not None and 0 <= kept < len(df) and "val_loss" in df.columns:
        best = df.iloc[kept]
        fig.add_trace(
            go.Scatter(
                x=[best["epoch"]],
                y=[best["val_loss"]],
                mode="markers",
                marker={
                    "size": 12, "color": "rgba(0,0,0,0)", "line": {"color": "#111", "width": 2}
                },
                name=f"weights kept (best validation loss, epoch {best['epoch']:g})",
                hovertemplate="kept: epoch %{x}<br>validation loss %{y:.4f}<extra></extra>",
            )
        )
        fig.add_vline(x=float(best["epoch"]), line={"color": "#111", "dash": "dash", "width": 1})
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="denoising loss")
    return _layout(fig, None, height)


_GIVEN = "#8c6bb1"
_IMPUTED = "rgba(120,120,120,0.45)"
#: What the profile calls an IDP the person lacks, on its axis and in its legend.
IMPUTED_LABEL = "imputed (missing)"


def _conditional_trace(
    df: pd.DataFrame, conditional: pd.DataFrame, y: list, given_label: str, threshold: float
) -> go.Bar:
    """The conditional z of each row of `df` (nan for given IDPs), hatched, with the
    centile's Monte-Carlo interval."""
    found = conditional.set_index("idp")
    z = found["z"].reindex(df["idp"]).to_numpy(dtype=float)
    lo = found["z_lo"].reindex(df["idp"]).to_numpy(dtype=float) if "z_lo" in found else z
    hi = found["z_hi"].reindex(df["idp"]).to_numpy(dtype=float) if "z_hi" in found else z
    centile = found["centile"].reindex(df["idp"]).to_numpy(dtype=float)
    return go.Bar(
        orientation="h", y=y, x=z, name=f"... and the same {given_label}",
        offsetgroup="given",
        marker={
            "color": [_FLAG if abs(v) > threshold else _GIVEN for v in np.nan_to_num(z)],
            "pattern": {"shape": "/", "fgcolor": "white", "size": 5},
        },
        error_x={
            "type": "data", "symmetric": False, "array": np.clip(hi - z, 0, None),
            "arrayminus": np.clip(z - lo, 0, None), "color": "#333", "thickness": 1.2,
            "width": 3, "visible": True,
        },
        customdata=np.column_stack([centile, df["idp"]]),
        hovertemplate="%{customdata[1]}<br>given " + given_label
        + "<br>z = %{x:.2f}<br>centile %{customdata[0]:.1f}<extra></extra>",
    )  # fmt: skip


def profile_comparison(
    profile: pd.DataFrame,
    conditional: pd.DataFrame | None = None,
    imputed: pd.DataFrame | None = None,
    given: Sequence[str] = (),
    threshold: float = _Z_FLAG,
    height: int | None = None,
) -> go.Figure:
    """One person's profile "compared with people of the same age, sex and site" and,
    beside it on each IDP's row, "... and the same [given IDPs]".

    `profile`: `explore.person_profile` of the person's unconditional scores (every IDP;
    z nan where the person lacks the IDP). `conditional`: the same of `score(given=...)`
    (the given IDPs have no row there; their rows say "(given)"). `imputed`:
    `explore.imputed_band_z`, one row per missing IDP with its imputed band in z
    (`z_q02` ... `z_q98`): drawn as a grey bar from its lowest to its highest quantile with
    a tick at the median, the row labelled "imputed (missing)". Rows are grouped by region
    type as in `deviation_profile`; |z| beyond `threshold` in red.
    """
    order = {g: k for k, g in enumerate(GROUP_ORDER)}
    df = profile.copy()
    df["group"] = [region_group(i) for i in df["idp"]]
    df = df.sort_values("group", key=lambda g: g.map(order), kind="stable").reset_index(drop=True)
    bands = imputed.set_index("idp") if imputed is not None and len(imputed) else None
    shown_given = [g for g in given if g in set(df["idp"])] if conditional is not None else []

    def row_label(idp: str) -> str:
        if bands is not None and idp in bands.index:
            return f"{label(idp)} · {IMPUTED_LABEL}"
        return f"{label(idp)} (given)" if idp in shown_given else label(idp)

    y = [df["group"].tolist(), [row_label(i) for i in df["idp"]]]
    z = df["z"].to_numpy(dtype=float)
    fig = go.Figure(
        go.Bar(
            orientation="h", y=y, x=z, name="compared with people of the same age, sex and site",
            offsetgroup="reference",
            marker_color=[_FLAG if abs(v) > threshold else _OK for v in np.nan_to_num(z)],
            error_x={
                "type": "data", "symmetric": False,
                "array": (df["z_hi"] - df["z"]).clip(lower=0).to_numpy(dtype=float),
                "arrayminus": (df["z"] - df["z_lo"]).clip(lower=0).to_numpy(dtype=float),
                "color": "#333", "thickness": 1.2, "width": 3, "visible": True,
            } if {"z_lo", "z_hi"} <= set(df.columns) else None,
            customdata=np.column_stack([df["centile"], df["value"], df["idp"]]),
            hovertemplate="%{customdata[2]}<br>z = %{x:.2f}<br>centile %{customdata[0]:.1f}"
            "<br>value %{customdata[1]:,.4~f}<extra></extra>",
        )
    )  # fmt: skip
    given_label = ", ".join(label(g) for g in given) or "given IDPs"
    if conditional is not None:
        fig.add_trace(_conditional_trace(df, conditional, y, given_label, threshold))
    reach = [z, df.get("z_lo", z), df.get("z_hi", z)]
    if bands is not None:
        columns = sorted(c for c in bands.columns if str(c).startswith("z_q"))
        band = bands.reindex(df["idp"])[columns].to_numpy(dtype=float)
        lo, hi, mid = band[:, 0], band[:, -1], band[:, len(columns) // 2]
        fig.add_trace(
            go.Bar(
                orientation="h", y=y, x=hi - lo, base=lo, name=f"{IMPUTED_LABEL}: its band "
                "given the measures present", offsetgroup="reference",
                marker={"color": _IMPUTED, "line": {"color": "#555", "width": 1}},
                customdata=np.column_stack([lo, hi, df["idp"]]),
                hovertemplate="%{customdata[2]}: " + IMPUTED_LABEL + "<br>band z %{customdata[0]"
                ":.2f} to %{customdata[1]:.2f}<extra></extra>",
            )
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                y=y, x=mid, mode="markers", name=f"{IMPUTED_LABEL}: median",
                marker={"symbol": "line-ns", "size": 12, "line": {"width": 2, "color": "#222"}},
                hoverinfo="skip",
            )
        )  # fmt: skip
        reach += [lo, hi]
    fig.add_vrect(x0=-threshold, x1=threshold, fillcolor="rgba(31,111,139,0.07)", line_width=0,
                  layer="below")
    for t in (-threshold, threshold):
        fig.add_vline(x=t, line={"color": "#888", "dash": "dot", "width": 1})
    found = np.abs(np.concatenate([np.asarray(r, dtype=float) for r in reach]))
    found = found[np.isfinite(found)]
    limit = max(3.0, min(6.5, float(found.max()) + 0.3)) if found.size else 3.0
    fig.update_xaxes(
        title_text="z (standard deviations from the norm)", range=[-limit, limit],
        zeroline=True, side="top",
    )
    fig.update_yaxes(autorange="reversed", automargin=True, dtick=1, tickfont={"size": 11})
    fig.update_layout(barmode="group", bargap=0.25)
    per_row = _PROFILE_ROW_PX * (1.6 if conditional is not None else 1.0)
    return _layout(fig, None, height or int(160 + per_row * len(df)))


def joint_draws_over_fans(
    centiles: pd.DataFrame,
    draws: pd.DataFrame,
    margins: pd.DataFrame,
    x: str,
    y: str,
    at_age: float,
    age: str = "age",
    truth: pd.DataFrame | None = None,
    height: int = 420,
) -> go.Figure:
    """Joint draws of two IDPs over their centile fans (the Teach page).

    Left and middle: the fans of `x` and `y` over age (`centiles`, long, with the true
    centiles dashed when `truth` is given) with the draws at `at_age` as a column of dots.
    Right: the same draws of (x, y) as a scatter, crossed by each IDP's centiles at that
    age (`margins`: `model.centiles` at the draws' covariates), so that one sees the
    margins agree with the fans while the cloud shows how the two measures vary together.
    `draws`: `model.sample` at the chosen covariates (columns x and y).
    """
    fig = make_subplots(
        rows=1, cols=3, horizontal_spacing=0.09,
        subplot_titles=[label(x), label(y), f"{label(x)} and {label(y)} at age {at_age:g}"],
    )  # fmt: skip
    dots = {"color": _POINTS, "size": 4, "opacity": 0.35}
    for col, idp in ((1, x), (2, y)):
        wide = _wide(centiles, idp, age)
        _add_fan(fig, wide, 1, col, col == 1)
        if truth is not None:
            _add_truth(fig, _wide(truth, idp, age), 1, col, col == 1)
        fig.add_trace(
            go.Scatter(
                x=np.full(len(draws), float(at_age)), y=draws[idp], mode="markers",
                marker=dots, name="joint draws", legendgroup="draws", showlegend=col == 1,
                hovertemplate="draw: %{y:.4g}<extra></extra>",
            ),
            row=1, col=col,
        )  # fmt: skip
        fig.update_xaxes(title_text="age (years)", row=1, col=col)
        fig.update_yaxes(
            title_text=axis_title(idp, label(idp)), tickformat=tick_format(idp), row=1, col=col
        )
    fig.add_trace(
        go.Scatter(
            x=draws[x], y=draws[y], mode="markers", marker=dots, name="joint draws",
            legendgroup="draws", showlegend=False,
            hovertemplate=f"{label(x)} %{{x:.4g}}<br>{label(y)} %{{y:.4g}}<extra></extra>",
        ),
        row=1, col=3,
    )  # fmt: skip
    for idp, add in ((x, fig.add_vline), (y, fig.add_hline)):
        one = margins[margins["idp"] == idp].sort_values("quantile")
        for q, value in zip(one["quantile"], one["value"]):
            style = {"color": _MEDIAN, "width": 2 if q == 0.5 else 1,
                     "dash": "solid" if q == 0.5 else "dot"}
            add(float(value), line=style, row=1, col=3)
    fig.update_xaxes(title_text=axis_title(x, label(x)), tickformat=tick_format(x), row=1, col=3)
    fig.update_yaxes(title_text=axis_title(y, label(y)), tickformat=tick_format(y), row=1, col=3)
    return _layout(fig, None, height)
