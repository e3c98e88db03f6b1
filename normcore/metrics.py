"""Evaluation metrics for normative models: calibration, dependence, memorisation.

Every function here is pure (arrays / DataFrames in, floats / arrays / DataFrames out) so
that the CLI report, the dashboard's Diagnostics page and the benchmarks compute exactly
the same numbers. The suite follows the paper we build on (Whitbread, Palmer & Jenkinson,
arXiv 2602.04886) and adds calibration per stratum, because a model that is calibrated
on average can still be badly off for one site or one sex.

Conventions
-----------
* A "PIT" array holds, for each person and IDP, the model's conditional CDF evaluated at the
  observed value (probability integral transform). For a calibrated model and held-out
  people it is Uniform(0, 1) per IDP. Shape (n, D); a 1-D array is one IDP.
* A pandas DataFrame input names its IDPs by its columns; a numpy input names them
  "0", "1", ... . Non-finite PIT values (an IDP missing for a person) are skipped per IDP.
* Per-IDP outputs are long DataFrames with an ``idp`` column, ready for plotting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist, pdist

from normcore.numeric import rank_normal_scores
from normcore.options import DEFAULT_QUANTILES

DEFAULT_NOMINAL: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
POOLED = "(pooled)"
"""Label of the rows that pool every IDP together in the PIT histogram and QQ tables."""

ArrayLike = np.ndarray | pd.DataFrame | pd.Series | Sequence[float]


# ----------------------------------------------------------------------------- helpers


def _matrix(x: ArrayLike, what: str = "array") -> tuple[np.ndarray, list[str]]:
    """Return a float (n, D) matrix and the IDP names (DataFrame columns or "0".."D-1")."""
    if isinstance(x, pd.DataFrame):
        names = [str(c) for c in x.columns]
        values = x.to_numpy(dtype=float)
    else:
        values = np.asarray(x, dtype=float)
        if values.ndim == 1:
            values = values[:, None]
        names = [str(j) for j in range(values.shape[1])] if values.ndim == 2 else []
    if values.ndim != 2:
        raise ValueError(f"{what} must be 1-D or 2-D, got shape {values.shape}")
    return values, names


def _pit_matrix(pit: ArrayLike) -> tuple[np.ndarray, list[str]]:
    """Like `_matrix`, and refuse values outside [0, 1], which cannot be PIT values."""
    values, names = _matrix(pit, "pit")
    finite = values[np.isfinite(values)]
    if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
        raise ValueError("PIT values must lie in [0, 1]")
    return values, names


def _vector(x: ArrayLike, n: int, what: str) -> np.ndarray:
    v = np.asarray(x, dtype=float).ravel()
    if v.shape[0] != n:
        raise ValueError(f"{what} has {v.shape[0]} values, expected {n}")
    return v


def _fraction_at_most(pit: np.ndarray, q: float) -> np.ndarray:
    """Per column, the fraction of finite PIT values <= q (NaN for an all-missing column).

    PIT <= q is the same event as "value <= the model's q-quantile", so this is the
    empirical coverage of the model's q-quantile.
    """
    valid = np.isfinite(pit)
    count = valid.sum(axis=0)
    hits = ((pit <= q) & valid).sum(axis=0)
    return np.divide(hits, count, out=np.full(pit.shape[1], np.nan), where=count > 0)


def _central_coverage(pit: np.ndarray, level: float) -> np.ndarray:
    """Per column, the fraction of finite PIT values inside the central `level` interval."""
    valid = np.isfinite(pit)
    count = valid.sum(axis=0)
    lo, hi = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    hits = ((pit >= lo) & (pit <= hi) & valid).sum(axis=0)
    return np.divide(hits, count, out=np.full(pit.shape[1], np.nan), where=count > 0)


def _equal_count_edges(ages: np.ndarray, min_count: int = 20, max_bins: int = 10) -> np.ndarray:
    """Age-bin edges with (near) equal counts and at least `min_count` people per bin.

    Walks the sorted ages, never splitting people of the same age, and closes a bin once
    it holds n / n_bins people, or earlier (with >= `min_count` people) when the next
    group of tied ages would overshoot that target more than stopping falls short of it.
    A short last bin is merged into the one before. Bins are [edge_k, edge_{k+1}) with the
    last one closed, as in `_assign_bins`.
    """
    a = np.sort(ages[np.isfinite(ages)])
    if a.size == 0:
        raise ValueError("no finite ages")
    n_bins = int(np.clip(a.size // min_count, 1, max_bins))
    target = a.size / n_bins
    values, counts = np.unique(a, return_counts=True)
    edges = [values[0]]
    in_bin = 0
    for k in range(values.size - 1):
        in_bin += counts[k]
        overshoot = in_bin + counts[k + 1] - target
        if in_bin >= target or (in_bin >= min_count and overshoot > target - in_bin):
            edges.append(values[k + 1])
            in_bin = 0
    in_bin += counts[-1]
    if in_bin and in_bin < min_count and len(edges) > 1:
        edges.pop()  # merge the short tail into the previous bin
    edges.append(values[-1])
    return np.asarray(edges, dtype=float)


def _assign_bins(ages: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each age for bins [e_k, e_{k+1}) (last closed); -1 outside or NaN.

    A single degenerate bin [v, v] is allowed: a cohort whose members all have one age.
    """
    edges = np.asarray(edges, dtype=float)
    single_age = edges.shape == (2,) and edges[0] == edges[1]
    if edges.ndim != 1 or edges.size < 2 or (np.any(np.diff(edges) <= 0) and not single_age):
        raise ValueError("age bin edges must be a strictly increasing sequence of >= 2 values")
    idx = np.searchsorted(edges, ages, side="right") - 1
    idx[ages == edges[-1]] = edges.size - 2
    idx[(ages < edges[0]) | (ages > edges[-1]) | ~np.isfinite(ages)] = -1
    return idx


def _bin_edges(ages: np.ndarray, bins: int | Sequence[float] | None, min_count: int) -> np.ndarray:
    """Resolve an age-bin specification: None (equal-count bins of >= `min_count` people),
    an int (that many equal-count bins from the age quantiles) or explicit edges."""
    if bins is None:
        return _equal_count_edges(ages, min_count=min_count)
    if isinstance(bins, (int, np.integer)):
        finite = ages[np.isfinite(ages)]
        edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, int(bins) + 1)))
        return edges if edges.size > 1 else np.repeat(edges, 2)
    return np.asarray(bins, dtype=float)


def _sort_by_idp(table: pd.DataFrame, names: list[str], then: list[str]) -> pd.DataFrame:
    """Sort by IDP in column order (not alphabetically: "10" would precede "2"), then `then`."""
    position = {name: k for k, name in enumerate(names)}
    return table.sort_values(
        ["idp", *then],
        key=lambda col: col.map(position) if col.name == "idp" else col,
        ignore_index=True,
        kind="stable",
    )


def _subsample(x: np.ndarray, max_n: int, rng: np.random.Generator) -> np.ndarray:
    if x.shape[0] <= max_n:
        return x
    return x[rng.choice(x.shape[0], size=max_n, replace=False)]


def _select_pairs(
    d: int, pairs: Sequence[tuple[int, int]] | None, max_pairs: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Given pairs, or all pairs when there are at most `max_pairs`, else a seeded sample."""
    if pairs is not None:
        chosen = [(int(a), int(b)) for a, b in pairs]
    else:
        chosen = list(combinations(range(d), 2))
        if len(chosen) > max_pairs:
            keep = np.sort(rng.choice(len(chosen), size=max_pairs, replace=False))
            chosen = [chosen[k] for k in keep]
    for a, b in chosen:
        if not (0 <= a < d and 0 <= b < d) or a == b:
            raise ValueError(f"invalid IDP pair ({a}, {b}) for {d} IDPs")
    return chosen


# ------------------------------------------------------------------ marginal calibration


def ace(
    pit: ArrayLike,
    ages: ArrayLike,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    age_bins: int | Sequence[float] | None = None,
    min_count: int = 20,
) -> pd.DataFrame:
    """Centile error per IDP, quantile and age bin.

    Definition: in age bin b, for IDP j and quantile q,
    ``error = #{i in b : pit_ij <= q} / #{i in b} - q``, the empirical minus nominal
    fraction of people below the model's q-quantile (signed; ACE is its absolute value).

    Age bins: ``None`` gives equal-count bins with at least `min_count` people each (at
    most 10 bins), so that every bin's fraction is estimated from enough people; an int
    gives that many quantile bins; a sequence gives explicit edges [e_k, e_{k+1}) with the
    last bin closed (people outside are left out).

    Returns columns idp, quantile, age_bin (0-based), age_low, age_high (bin edges), n,
    fraction, error.
    """
    values, names = _pit_matrix(pit)
    age = _vector(ages, values.shape[0], "ages")
    edges = _bin_edges(age, age_bins, min_count)
    idx = _assign_bins(age, edges)
    rows = []
    for b in range(edges.size - 1):
        in_bin = values[idx == b]
        if in_bin.shape[0] == 0:
            continue
        n = np.isfinite(in_bin).sum(axis=0)
        for q in quantiles:
            frac = _fraction_at_most(in_bin, q)
            for j, name in enumerate(names):
                rows.append((name, float(q), b, edges[b], edges[b + 1], int(n[j]), frac[j]))
    out = pd.DataFrame(
        rows, columns=["idp", "quantile", "age_bin", "age_low", "age_high", "n", "fraction"]
    )
    out["error"] = out["fraction"] - out["quantile"]
    return _sort_by_idp(out, names, ["quantile", "age_bin"])


def ace_summary(
    pit: ArrayLike,
    ages: ArrayLike,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    age_bins: int | Sequence[float] | None = None,
    min_count: int = 20,
) -> float:
    """The paper's ACE: mean of |error| from `ace` over age bins, IDPs and quantiles.

    Each (bin, IDP, quantile) cell weighs the same, as in the paper, so a small age bin
    counts as much as a large one.
    """
    table = ace(pit, ages, quantiles=quantiles, age_bins=age_bins, min_count=min_count)
    return float(np.nanmean(np.abs(table["error"].to_numpy())))


def coverage(pit: ArrayLike, nominal: Sequence[float] = DEFAULT_NOMINAL) -> pd.DataFrame:
    """Empirical coverage of central intervals, per IDP and nominal level.

    Definition: the central interval at level c covers a person when
    ``(1 - c) / 2 <= pit <= (1 + c) / 2``; empirical = fraction covered,
    error = empirical - nominal (negative: intervals too narrow, the model is
    over-confident). The paper's ECP is the row with nominal 0.95.

    Returns columns idp, nominal, n, empirical, error.
    """
    values, names = _pit_matrix(pit)
    n = np.isfinite(values).sum(axis=0)
    frames = [
        pd.DataFrame(
            {"idp": names, "nominal": float(c), "n": n, "empirical": _central_coverage(values, c)}
        )
        for c in nominal
    ]
    out = pd.concat(frames, ignore_index=True)
    out["error"] = out["empirical"] - out["nominal"]
    return _sort_by_idp(out, names, ["nominal"])


def _with_pooled(
    values: np.ndarray, names: list[str], pooled: bool
) -> list[tuple[str, np.ndarray]]:
    columns = [(name, values[:, j][np.isfinite(values[:, j])]) for j, name in enumerate(names)]
    if pooled:
        columns.append((POOLED, values[np.isfinite(values)]))
    return columns


def pit_histogram(pit: ArrayLike, bins: int = 20, pooled: bool = False) -> pd.DataFrame:
    """Histogram of PIT values on [0, 1] per IDP, as a density (1.0 everywhere if uniform).

    Definition: density_k = count_k / (n * width), with `bins` equal-width bins
    [k/bins, (k+1)/bins) (the last one closed). A U shape means the model is
    over-confident (too narrow), a hump under-confident, a slope biased.
    `pooled=True` adds rows with idp == POOLED over all IDPs together.

    Returns columns idp, bin_left, bin_right, count, density.
    """
    values, names = _pit_matrix(pit)
    edges = np.linspace(0.0, 1.0, bins + 1)
    frames = []
    for name, x in _with_pooled(values, names, pooled):
        counts, _ = np.histogram(x, bins=edges)
        density = counts / (max(x.size, 1) * np.diff(edges))
        frames.append(
            pd.DataFrame(
                {
                    "idp": name,
                    "bin_left": edges[:-1],
                    "bin_right": edges[1:],
                    "count": counts,
                    "density": density,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def pit_qq(pit: ArrayLike, n_points: int = 101, pooled: bool = False) -> pd.DataFrame:
    """QQ data of PIT values against Uniform(0, 1), per IDP.

    Definition: at probabilities u = 0, 1/(n_points-1), ..., 1, ``uniform = u`` (the
    Uniform(0,1) quantile) and ``empirical`` = the u-quantile of the PIT values (linear
    interpolation). A calibrated model lies on the diagonal.

    Returns columns idp, uniform, empirical.
    """
    values, names = _pit_matrix(pit)
    u = np.linspace(0.0, 1.0, n_points)
    frames = [
        pd.DataFrame(
            {"idp": name, "uniform": u, "empirical": np.quantile(x, u) if x.size else np.nan}
        )
        for name, x in _with_pooled(values, names, pooled)
    ]
    return pd.concat(frames, ignore_index=True)


def ks_uniform(pit: ArrayLike) -> pd.DataFrame:
    """One-sample Kolmogorov-Smirnov test of each IDP's PIT values against Uniform(0, 1).

    Definition: statistic = sup_u |F_n(u) - u| (F_n the empirical CDF of the PIT values);
    p_value from its exact distribution (`scipy.stats.kstwo`), as `scipy.stats.ks_1samp`
    gives it. The statistic is computed here, for all IDPs with the same number of people
    at once: called per IDP, `ks_1samp` was most of the Diagnostics page's evaluation,
    which tests every IDP in every stratum (`calibration_by_stratum`). Valid for held-out
    people; PIT values of the training people are pulled towards uniform by the fit itself.

    Returns columns idp, n, statistic, p_value (NaN for an IDP without values).
    """
    values, names = _pit_matrix(pit)
    finite = np.isfinite(values)
    n = finite.sum(axis=0)
    statistic = np.full(len(names), np.nan)
    for count in np.unique(n[n > 0]):
        cols = np.flatnonzero(n == count)
        x = np.sort(np.column_stack([values[finite[:, j], j] for j in cols]), axis=0)
        steps = np.arange(1, count + 1)[:, None] / count
        statistic[cols] = np.maximum(steps - x, x - (steps - 1 / count)).max(axis=0)
    p_value = np.full(len(names), np.nan)
    p_value[n > 0] = stats.kstwo.sf(statistic[n > 0], n[n > 0])
    return pd.DataFrame({
        "idp": names, "n": n.astype(int), "statistic": statistic,
        "p_value": np.clip(p_value, 0.0, 1.0),
    })


def ks_by_age_bin(
    real: ArrayLike,
    generated: ArrayLike,
    real_age: ArrayLike,
    generated_age: ArrayLike,
    bins: int | Sequence[float] = 10,
    min_count: int = 10,
) -> pd.DataFrame:
    """Two-sample KS test of real vs model-generated values, per IDP and age bin.

    Definition: in each age bin holding at least `min_count` real and `min_count`
    generated rows, statistic = sup_y |F_real(y) - F_generated(y)| and its p-value from
    `scipy.stats.ks_2samp` (method "auto"). The paper permutes; without ties the exact
    two-sample KS null distribution *is* the permutation distribution, so no resampling is
    needed. p_adjusted: Benjamini-Hochberg over the bins of each IDP.

    `bins`: an int gives that many equal-count bins from the real ages; a sequence gives
    edges [e_k, e_{k+1}) with the last closed. Combine the p-values of an IDP with
    `combine_pvalues`, or summarise them all with `ks_summary`.

    Returns columns idp, age_bin, age_low, age_high, n_real, n_generated, statistic,
    p_value, p_adjusted.
    """
    r, names = _matrix(real, "real")
    g, g_names = _matrix(generated, "generated")
    if r.shape[1] != g.shape[1]:
        raise ValueError(f"real has {r.shape[1]} IDPs but generated has {g.shape[1]}")
    r_age = _vector(real_age, r.shape[0], "real_age")
    g_age = _vector(generated_age, g.shape[0], "generated_age")
    edges = _bin_edges(r_age, bins, min_count)
    r_idx, g_idx = _assign_bins(r_age, edges), _assign_bins(g_age, edges)
    rows = []
    for j, name in enumerate(names):
        for b in range(edges.size - 1):
            x = r[r_idx == b, j]
            y = g[g_idx == b, j]
            x, y = x[np.isfinite(x)], y[np.isfinite(y)]
            if x.size < min_count or y.size < min_count:
                continue
            res = stats.ks_2samp(x, y)
            rows.append(
                (name, b, edges[b], edges[b + 1], x.size, y.size, res.statistic, res.pvalue)
            )
    columns = ["idp", "age_bin", "age_low", "age_high", "n_real", "n_generated", "statistic"]
    out = pd.DataFrame(rows, columns=[*columns, "p_value"]).astype(
        {
            "age_bin": int,
            "age_low": float,
            "age_high": float,
            "n_real": int,
            "n_generated": int,
            "statistic": float,
            "p_value": float,
        }
    )
    out["p_adjusted"] = np.nan
    for _, index in out.groupby("idp", sort=False).groups.items():
        out.loc[index, "p_adjusted"] = stats.false_discovery_control(
            out.loc[index, "p_value"].to_numpy(), method="bh"
        )
    return out


def combine_pvalues(p: ArrayLike, method: Literal["fisher", "stouffer"] = "fisher") -> float:
    """One combined p-value for independent tests (e.g. the age bins of one IDP).

    Fisher: -2 sum log p ~ chi2(2k). Stouffer: sum Phi^-1(1 - p) / sqrt(k) ~ N(0, 1).
    Computed by `scipy.stats.combine_pvalues`; p-values are first clipped into the open
    interval (0, 1) so that an exact 0 or 1 cannot make Stouffer's sum NaN (inf - inf).
    """
    values = np.asarray(p, dtype=float).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    values = np.clip(values, np.finfo(float).tiny, np.nextafter(1.0, 0.0))
    return float(stats.combine_pvalues(values, method=method).pvalue)


def ks_summary(ks_table: pd.DataFrame) -> pd.DataFrame:
    """Per IDP summary of `ks_by_age_bin`, as the paper reports it.

    Columns idp, n_bins, mean_statistic, max_statistic, fisher_p, stouffer_p,
    n_significant (bins with p_adjusted < 0.05).
    """
    rows = [
        (
            idp,
            len(group),
            float(group["statistic"].mean()),
            float(group["statistic"].max()),
            combine_pvalues(group["p_value"], "fisher"),
            combine_pvalues(group["p_value"], "stouffer"),
            int((group["p_adjusted"] < 0.05).sum()),
        )
        for idp, group in ks_table.groupby("idp", sort=False)
    ]
    return pd.DataFrame(
        rows,
        columns=[
            "idp",
            "n_bins",
            "mean_statistic",
            "max_statistic",
            "fisher_p",
            "stouffer_p",
            "n_significant",
        ],
    )


# ------------------------------------------------------------------ calibration by stratum


def age_bands(ages: ArrayLike, edges: Sequence[float] | None = None) -> pd.Series:
    """Label each age with its band, e.g. 20 <= age < 30 -> "20-30".

    Default edges are whole decades covering the data. Bands are [low, high) with the
    last one closed; ages outside the edges (or missing) get NaN. The result is an
    ordered categorical so that bands sort by age, not alphabetically.
    """
    index = ages.index if isinstance(ages, pd.Series) else None
    a = np.asarray(ages, dtype=float).ravel()
    if edges is None:
        finite = a[np.isfinite(a)]
        if finite.size == 0:
            raise ValueError("no finite ages")
        low = np.floor(finite.min() / 10.0) * 10.0
        high = np.floor(finite.max() / 10.0) * 10.0 + 10.0
        bounds = np.arange(low, high + 5.0, 10.0)
    else:
        bounds = np.asarray(edges, dtype=float)
    idx = _assign_bins(a, bounds)
    labels = [f"{lo:g}-{hi:g}" for lo, hi in zip(bounds[:-1], bounds[1:])]
    codes = np.where(idx >= 0, idx, -1)
    cat = pd.Categorical.from_codes(codes, categories=labels, ordered=True)
    return pd.Series(cat, index=index, name="age_band")


def calibration_by_stratum(
    pit: ArrayLike,
    strata: pd.DataFrame,
    min_count: int = 10,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Calibration within each stratum (each combination of the `strata` columns).

    A model calibrated on average can be off for one site or one sex; this shows it. Per
    stratum with at least `min_count` people:

    * ks_mean / ks_max: mean / max over IDPs of the one-sample KS statistic vs U(0, 1);
    * p_value: Simes combination of the IDPs' KS p-values (the smallest BH-adjusted one),
      valid when the IDPs are positively dependent, as brain measures usually are (Fisher
      would be anti-conservative for correlated IDPs);
    * p_adjusted: Benjamini-Hochberg of p_value across the evaluated strata;
    * coverage95_error: mean over IDPs of (coverage of the central 95% interval - 0.95);
    * ace: mean over IDPs and `quantiles` of |fraction(pit <= q) - q|;
    * miscalibrated: p_adjusted < alpha.

    Smaller strata are listed with n and NaN metrics (evaluated False) rather than dropped,
    so that the reader sees which groups were too small to judge.

    Returns the strata columns, stratum (a " / "-joined label), n, evaluated, ks_mean,
    ks_max, p_value, p_adjusted, coverage95_error, ace, miscalibrated.
    """
    values, _ = _pit_matrix(pit)
    if len(strata) != values.shape[0]:
        raise ValueError(f"strata has {len(strata)} rows, pit has {values.shape[0]}")
    if strata.shape[1] == 0:
        raise ValueError("strata needs at least one column")
    keys = list(strata.columns)
    grouped = strata.reset_index(drop=True).groupby(keys, dropna=False, observed=True, sort=True)
    rows = []
    for key, index in grouped.indices.items():
        key = key if isinstance(key, tuple) else (key,)
        sub = values[index]
        row = dict(zip(keys, key))
        row["stratum"] = " / ".join(str(k) for k in key)
        row["n"] = len(index)
        row["evaluated"] = len(index) >= min_count
        if row["evaluated"]:
            ks = ks_uniform(sub)
            p = ks["p_value"].dropna().to_numpy()
            row["ks_mean"] = float(ks["statistic"].mean())
            row["ks_max"] = float(ks["statistic"].max())
            row["p_value"] = float(stats.false_discovery_control(p).min()) if p.size else np.nan
            row["coverage95_error"] = float(np.nanmean(_central_coverage(sub, 0.95)) - 0.95)
            row["ace"] = float(
                np.nanmean([np.abs(_fraction_at_most(sub, q) - q) for q in quantiles])
            )
        rows.append(row)
    metrics = ["ks_mean", "ks_max", "p_value", "coverage95_error", "ace"]
    out = pd.DataFrame(rows).reindex(columns=[*keys, "stratum", "n", "evaluated", *metrics])
    out[metrics] = out[metrics].astype(float)
    out["p_adjusted"] = np.nan
    tested = out["evaluated"].to_numpy(dtype=bool) & out["p_value"].notna().to_numpy()
    if tested.any():
        out.loc[tested, "p_adjusted"] = stats.false_discovery_control(
            out.loc[tested, "p_value"].to_numpy()
        )
    out["miscalibrated"] = (out["p_adjusted"] < alpha).to_numpy(dtype=bool)
    ordered = [*keys, "stratum", "n", "evaluated", "ks_mean", "ks_max", "p_value", "p_adjusted"]
    return out[[*ordered, "coverage95_error", "ace", "miscalibrated"]]


# ------------------------------------------------------------------------- dependence


def correlation_error(
    real: ArrayLike, generated: ArrayLike, method: Literal["pearson", "spearman"] = "pearson"
) -> float:
    """Mean absolute difference between the real and generated correlation matrices.

    Definition: mean over pairs i < j of |R_real[i, j] - R_generated[i, j]|, with R the
    Pearson (or, with method="spearman", rank) correlation. Per-IDP models that sample
    IDPs independently score about the mean |R_real| here; a joint model should be near 0.
    Rows with any non-finite value are dropped.
    """
    r, _ = _matrix(real, "real")
    g, _ = _matrix(generated, "generated")
    if r.shape[1] != g.shape[1] or r.shape[1] < 2:
        raise ValueError("real and generated need the same number (>= 2) of IDPs")
    mats = []
    for x in (r, g):
        x = x[np.all(np.isfinite(x), axis=1)]
        if method == "spearman":
            x = stats.rankdata(x, axis=0)
        elif method != "pearson":
            raise ValueError(f"unknown method {method!r}")
        mats.append(np.corrcoef(x, rowvar=False))
    upper = np.triu_indices(r.shape[1], k=1)
    return float(np.mean(np.abs(mats[0][upper] - mats[1][upper])))


def energy_distance(x: ArrayLike, y: ArrayLike, max_n: int = 2000, seed: int = 0) -> float:
    """Multivariate energy distance between two samples (V-statistic, squared form).

    Definition: E = 2 mean_ij |x_i - y_j| - mean_ij |x_i - x_j| - mean_ij |y_i - y_j|
    with Euclidean norms and all i, j (diagonal zeros included: the V-statistic). It is
    >= 0, and exactly 0 for identical samples; its population value is 0 iff the
    distributions are equal. This is the squared form (Szekely & Rizzo);
    `scipy.stats.energy_distance` is its square root, for 1-D only. Each sample is first
    subsampled to at most `max_n` rows (seeded) to bound the O(n^2) cost.
    """
    a, _ = _matrix(x, "x")
    b, _ = _matrix(y, "y")
    rng = np.random.default_rng(seed)
    a, b = _subsample(a, max_n, rng), _subsample(b, max_n, rng)
    return _energy(a, b)


def _energy(a: np.ndarray, b: np.ndarray) -> float:
    xy = cdist(a, b).mean()
    xx = cdist(a, a).mean()
    yy = cdist(b, b).mean()
    return float(max(2.0 * xy - xx - yy, 0.0))


def median_bandwidth(x: ArrayLike, y: ArrayLike, max_n: int = 1000, seed: int = 0) -> float:
    """Median heuristic: the median Euclidean distance between distinct rows of x and y
    pooled (at most `max_n` rows of each, seeded), so the RBF kernel adapts to the scale."""
    a, _ = _matrix(x, "x")
    b, _ = _matrix(y, "y")
    rng = np.random.default_rng(seed)
    pooled = np.vstack([_subsample(a, max_n, rng), _subsample(b, max_n, rng)])
    d = pdist(pooled)
    d = d[d > 0]
    return float(np.median(d)) if d.size else 1.0


def mmd_rbf(
    x: ArrayLike,
    y: ArrayLike,
    bandwidth: float | None = None,
    max_n: int = 2000,
    seed: int = 0,
) -> float:
    """Unbiased squared maximum mean discrepancy with a Gaussian (RBF) kernel.

    Definition: k(a, b) = exp(-|a - b|^2 / (2 s^2)) and
    MMD^2_u = mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean_ij k(x_i, y_j).
    Unbiased, so it can be slightly negative when the distributions are equal.
    s = `bandwidth`, or the median heuristic (`median_bandwidth`) when None. Samples are
    subsampled to at most `max_n` rows (seeded).
    """
    a, _ = _matrix(x, "x")
    b, _ = _matrix(y, "y")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("MMD needs at least 2 rows in each sample")
    rng = np.random.default_rng(seed)
    a, b = _subsample(a, max_n, rng), _subsample(b, max_n, rng)
    s = median_bandwidth(a, b, seed=seed) if bandwidth is None else float(bandwidth)
    return _mmd2(a, b, s)


def _mmd2(a: np.ndarray, b: np.ndarray, s: float) -> float:
    gamma = 1.0 / (2.0 * s * s)
    kxx = np.exp(-gamma * cdist(a, a, "sqeuclidean"))
    kyy = np.exp(-gamma * cdist(b, b, "sqeuclidean"))
    kxy = np.exp(-gamma * cdist(a, b, "sqeuclidean"))
    m, n = a.shape[0], b.shape[0]
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


PAIRWISE_COLUMNS = (
    "idp_a", "idp_b", "energy_joint", "energy_product", "mmd_joint", "mmd_product", "joint_better",
)  # fmt: skip
"""Columns of `pairwise_dependence`'s table."""


def pairwise_dependence(
    real: ArrayLike,
    generated: ArrayLike,
    pairs: Sequence[tuple[int, int]] | None = None,
    max_pairs: int = 50,
    max_n: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per IDP pair: does the model reproduce the pair's joint distribution?

    For each pair (all pairs, or a seeded sample of `max_pairs`), on values standardised
    with the real mean and SD (so that pairs are comparable):

    * energy_joint, mmd_joint: energy distance / MMD^2 between the real pairs and the
      generated pairs;
    * energy_product, mmd_product: the same against the product of the generated
      marginals, made by permuting each generated column independently (this keeps the
      marginals and destroys the dependence);
    * joint_better: energy_joint < energy_product. A model that learned the dependence
      beats its own independent version; one that did not cannot.

    Both MMD values of a pair use one bandwidth (median heuristic of real + generated) so
    they are comparable. Rows with a non-finite value in the pair are dropped.

    Returns columns idp_a, idp_b, energy_joint, energy_product, mmd_joint, mmd_product,
    joint_better.
    """
    r, names = _matrix(real, "real")
    g, _ = _matrix(generated, "generated")
    if r.shape[1] != g.shape[1]:
        raise ValueError(f"real has {r.shape[1]} IDPs but generated has {g.shape[1]}")
    rng = np.random.default_rng(seed)
    chosen = _select_pairs(r.shape[1], pairs, max_pairs, rng)
    mean, sd = np.nanmean(r, axis=0), np.nanstd(r, axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    rows = []
    for a, b in chosen:
        rp = (r[:, [a, b]] - mean[[a, b]]) / sd[[a, b]]
        gp = (g[:, [a, b]] - mean[[a, b]]) / sd[[a, b]]
        rp = _subsample(rp[np.all(np.isfinite(rp), axis=1)], max_n, rng)
        gp = _subsample(gp[np.all(np.isfinite(gp), axis=1)], max_n, rng)
        product = np.column_stack([rng.permutation(gp[:, 0]), rng.permutation(gp[:, 1])])
        s = median_bandwidth(rp, gp, seed=seed)
        e_joint, e_product = _energy(rp, gp), _energy(rp, product)
        rows.append(
            (
                names[a],
                names[b],
                e_joint,
                e_product,
                _mmd2(rp, gp, s),
                _mmd2(rp, product, s),
                e_joint < e_product,
            )
        )
    return pd.DataFrame(rows, columns=list(PAIRWISE_COLUMNS))


def mantel(
    a: np.ndarray, b: np.ndarray, n_permutations: int = 999, seed: int = 0
) -> tuple[float, float]:
    """Mantel test between two symmetric matrices of the same size.

    Statistic: Pearson correlation of their upper triangles (diagonal excluded).
    p-value (one-sided, for positive association): (1 + #{perm >= observed}) /
    (1 + n_permutations), where each permutation relabels the rows and columns of `b`
    jointly; this respects the dependence among entries sharing a row, which a plain
    correlation test would ignore.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 3:
        raise ValueError("mantel needs two square matrices of the same size (>= 3)")
    upper = np.triu_indices(a.shape[0], k=1)
    ua = a[upper] - a[upper].mean()
    ua_norm = np.sqrt(ua @ ua)

    def corr(bm: np.ndarray) -> float:
        ub = bm[upper] - bm[upper].mean()
        denom = ua_norm * np.sqrt(ub @ ub)
        return float(ua @ ub / denom) if denom > 0 else float("nan")

    observed = corr(b)
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(n_permutations):
        perm = rng.permutation(a.shape[0])
        exceed += corr(b[np.ix_(perm, perm)]) >= observed
    return observed, float((1 + exceed) / (1 + n_permutations))


def _shape_descriptors(z: np.ndarray, chosen: list[tuple[int, int]], bins: int) -> np.ndarray:
    """Per pair, the 2-D histogram of normal scores minus its independence expectation.

    Subtracting the outer product of the marginal histograms removes the blob every pair
    shares, leaving only the dependence shape, so descriptors of unrelated pairs do not all
    correlate highly just because they are all roughly bell-shaped.
    """
    limit = 2.5
    edges = np.linspace(-limit, limit, bins + 1)
    zc = np.clip(z, -limit, limit)
    out = np.empty((len(chosen), bins * bins))
    for k, (a, b) in enumerate(chosen):
        h, _, _ = np.histogram2d(zc[:, a], zc[:, b], bins=[edges, edges])
        h /= h.sum()
        out[k] = (h - np.outer(h.sum(axis=1), h.sum(axis=0))).ravel()
    return out


def pair_of_pair_mantel(
    real: ArrayLike,
    generated: ArrayLike,
    pairs: Sequence[tuple[int, int]] | None = None,
    max_pairs: int = 60,
    bins: int = 8,
    n_permutations: int = 999,
    seed: int = 0,
) -> dict[str, float]:
    """Higher-order dependence: are pairs that look alike in the real data alike in the
    generated data too?

    1. Each dataset is put on the normal-score scale per IDP (ranks), so only dependence
       remains. 2. For each IDP pair (all, or a seeded sample of `max_pairs`), the shape
       descriptor is its bins x bins histogram on [-2.5, 2.5]^2 minus the product of its
       marginals, flattened. 3. For each dataset, the pairs x pairs Pearson correlation
       matrix of descriptors. 4. The Mantel statistic between the real and generated
       matrices (`mantel`). Near 1: the model keeps which pairs share a dependence shape;
       near 0: it does not. Rows with any non-finite value are dropped.

    Returns {"statistic", "p_value", "n_pairs", "n_permutations"}.
    """
    r, _ = _matrix(real, "real")
    g, _ = _matrix(generated, "generated")
    if r.shape[1] != g.shape[1] or r.shape[1] < 3:
        raise ValueError("real and generated need the same number (>= 3) of IDPs")
    rng = np.random.default_rng(seed)
    chosen = _select_pairs(r.shape[1], pairs, max_pairs, rng)
    if len(chosen) < 3:
        raise ValueError("pair-of-pair comparison needs at least 3 pairs")
    matrices = []
    for x in (r, g):
        z = rank_normal_scores(x[np.all(np.isfinite(x), axis=1)])
        matrices.append(np.corrcoef(_shape_descriptors(z, chosen, bins)))
    statistic, p_value = mantel(matrices[0], matrices[1], n_permutations, seed)
    return {
        "statistic": statistic,
        "p_value": p_value,
        "n_pairs": len(chosen),
        "n_permutations": n_permutations,
    }


# ---------------------------------------------------------------------- memorisation


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k / n (no continuity correction;
    Wilson, JASA 1927).

    Unlike the normal (Wald) interval it stays inside [0, 1] and keeps its coverage near
    0 and 1. Its closed form, the same as `scipy.stats.binomtest(k, n).proportion_ci(
    method="wilson")`, which also computes a p-value by search: the Cohort page calls
    this for every IDP of every scored cohort.
    """
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    z = float(stats.norm.ppf(0.5 + level / 2))
    p, z2n = k / n, z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


def memorisation(
    generated: ArrayLike,
    train: ArrayLike,
    heldout: ArrayLike,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Does the model copy its training rows? Nearest-neighbour distance ratio test.

    Train and held-out rows are subsampled (seeded) to the same size m, so that neither
    set is closer just by being denser; all rows are standardised with the training mean
    and SD. For each generated row, r = d_train / d_heldout (Euclidean distances to the
    nearest training / held-out row; r = 1 when both are 0). A model that generalises
    sits as close to unseen people as to seen ones: P(r < 1) ~ 0.5 and median r ~ 1.
    P(r < 1) well above 0.5 means memorisation.

    near_duplicate_rate: fraction of generated rows with d_train at or below the 1st
    percentile of training-to-training nearest-neighbour distances (closer to a training
    row than almost any training row is to another).

    Returns {"median_r", "p_r_lt_1", "wilson_low", "wilson_high", "near_duplicate_rate",
    "n", "n_reference"} (n: generated rows; n_reference: m).
    """
    gen, _ = _matrix(generated, "generated")
    tr, _ = _matrix(train, "train")
    ho, _ = _matrix(heldout, "heldout")
    if not gen.shape[1] == tr.shape[1] == ho.shape[1]:
        raise ValueError("generated, train and heldout need the same IDP columns")
    gen, tr, ho = (x[np.all(np.isfinite(x), axis=1)] for x in (gen, tr, ho))
    m = min(tr.shape[0], ho.shape[0])
    if m < 2 or gen.shape[0] == 0:
        raise ValueError("memorisation needs >= 2 train and held-out rows and >= 1 generated")
    rng = np.random.default_rng(seed)
    tr, ho = _subsample(tr, m, rng), _subsample(ho, m, rng)
    mean, sd = tr.mean(axis=0), tr.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    tr, ho, gen = ((x - mean) / sd for x in (tr, ho, gen))
    train_tree = cKDTree(tr)
    d_train, _ = train_tree.query(gen, k=1)
    d_heldout, _ = cKDTree(ho).query(gen, k=1)
    both_zero = (d_train == 0) & (d_heldout == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(both_zero, 1.0, d_train / d_heldout)
    train_nn, _ = train_tree.query(tr, k=2)
    threshold = np.percentile(train_nn[:, 1], 1)
    below = int(np.sum(r < 1))
    low, high = wilson_interval(below, r.size, level)
    return {
        "median_r": float(np.median(r)),
        "p_r_lt_1": below / r.size,
        "wilson_low": low,
        "wilson_high": high,
        "near_duplicate_rate": float(np.mean(d_train <= threshold)),
        "n": int(r.size),
        "n_reference": int(m),
    }
