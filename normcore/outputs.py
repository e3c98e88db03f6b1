"""The model's result tables: arrays laid out as the DataFrames `NormativeModel` returns.

Pure functions with no model state. The model computes normal scores, z, quantiles,
deviations and draws; these place them beside the rows and covariates they belong to, in
the columns the CLI, the dashboard, the reports and the exports read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtr

from normcore.schema import Schema


@dataclass(frozen=True)
class PlacedRows:
    """The people of a checked table placed in the model's conditional law."""

    values: np.ndarray
    """(n, D) raw values of the IDPs."""
    ages: np.ndarray
    """(n,) ages in years."""
    z: np.ndarray
    """(n, D) z of each value within the reference table."""
    n_eff: np.ndarray
    """(n,) effective sample size of the reference table at each row's age and levels."""
    codes: np.ndarray
    """(n, K) category codes (0 = unknown)."""
    out_of_age_range: np.ndarray
    """(n,) bool: age outside the training ages."""
    unseen_levels: np.ndarray
    """(n,) str: the categorical covariates scored with the 'unknown' level, comma-joined."""
    out_of_site_age_range: np.ndarray
    """(n,) bool: age outside the training ages of the person's own site."""
    beyond_reference: np.ndarray
    """(n, D) bool: |z| past the last tabled z-level (`reference.Z_LEVELS`), at the
    person's age or at the nearest training age (see the model's `_place`)."""
    implausible: np.ndarray
    """(n, D) bool: a value no real person has (`plausibility.implausible_cells`); its z
    is NaN."""


def unseen_text(covariates: list[str], unseen: np.ndarray) -> np.ndarray:
    """(n,) object: per row, the names of `covariates` whose level is unseen ((n, K) mask)."""
    names = np.array(covariates, dtype=object)
    text = [",".join(names[m]) for m in unseen] if len(names) else [""] * len(unseen)
    return np.array(text, dtype=object)


def score_table(df: pd.DataFrame, schema: Schema, placed: PlacedRows) -> pd.DataFrame:
    """Long table, one row per person and IDP: `row`, the id column if any, `idp`, `value`,
    `centile`, `z`, `centile_se` and the flags.

    `centile_se` is the binomial standard error of a proportion estimated from the
    reference table's effective sample size: sqrt(p (1 - p) / n_eff). `beyond_reference`
    flags |z| past the last tabled z-level, where z is a Gaussian-tail extrapolation.
    Implausible values get no centile, z or standard error (NaN), never an
    ordinary-looking one.
    """
    n, d = placed.z.shape
    p = ndtr(placed.z)  # the normal CDF (scipy.stats.norm.cdf, without importing scipy.stats)
    out = _rows(df, schema, n, d)
    out["idp"] = np.tile(np.array(schema.idps, dtype=object), n)
    out["value"] = placed.values.reshape(-1)
    out["centile"] = 100.0 * p.reshape(-1)
    out["z"] = placed.z.reshape(-1)
    out["centile_se"] = (100.0 * np.sqrt(p * (1 - p) / placed.n_eff[:, None])).reshape(-1)
    out["out_of_age_range"] = np.repeat(placed.out_of_age_range, d)
    out["unseen_levels"] = np.repeat(placed.unseen_levels, d)
    out["out_of_site_age_range"] = np.repeat(placed.out_of_site_age_range, d)
    out["beyond_reference"] = placed.beyond_reference.reshape(-1)
    out["implausible"] = placed.implausible.reshape(-1)
    return out


def deviation_table(
    df: pd.DataFrame,
    schema: Schema,
    placed: PlacedRows,
    mahalanobis: np.ndarray,
    centile: np.ndarray,
) -> pd.DataFrame:
    """One row per person: `row`, the id column if any, `n_idps` (the IDPs the person
    has, over which the deviation is computed), `missing` (the IDPs they lack,
    comma-joined), `mahalanobis`, `deviation_centile` and the flags; no deviation (NaN)
    for a person with an implausible value, whose profile cannot be read as a whole, or
    with no IDP at all."""
    out = _rows(df, schema, len(mahalanobis), 1)
    missing = ~np.isfinite(placed.values)
    names = np.array(schema.idps, dtype=object)
    out["n_idps"] = (~missing).sum(axis=1)
    out["missing"] = np.array([",".join(names[row]) for row in missing], dtype=object)
    any_implausible = placed.implausible.any(axis=1)
    out["mahalanobis"] = np.where(any_implausible, np.nan, mahalanobis)
    out["deviation_centile"] = np.where(any_implausible, np.nan, centile)
    out["out_of_age_range"] = placed.out_of_age_range
    out["unseen_levels"] = placed.unseen_levels
    out["out_of_site_age_range"] = placed.out_of_site_age_range
    out["implausible"] = any_implausible
    return out


def centile_table(
    covariates: pd.DataFrame, schema: Schema, probs: np.ndarray, values: np.ndarray
) -> pd.DataFrame:
    """Long table of quantiles `values` (n rows, P probability levels, D IDPs): the
    covariate columns given, `idp`, `quantile` (0-1), `value`; IDPs vary slower than levels."""
    n, p, d = values.shape
    long = _covariate_columns(covariates, schema, np.repeat(np.arange(n), d * p))
    long["idp"] = np.tile(np.repeat(np.array(schema.idps, dtype=object), p), n)
    long["quantile"] = np.tile(probs, n * d)
    long["value"] = values.transpose(0, 2, 1).reshape(-1)
    return long


def sample_table(
    covariates: pd.DataFrame, schema: Schema, rows: np.ndarray, values: np.ndarray
) -> pd.DataFrame:
    """Wide table of draws: `grid_row` (the covariate row drawn at), the covariate columns
    given, then one column per IDP holding `values` (len(rows), D)."""
    out = _covariate_columns(covariates, schema, rows)
    out.insert(0, "grid_row", rows)
    return pd.concat([out, pd.DataFrame(values, columns=list(schema.idps))], axis=1)


def _covariate_columns(covariates: pd.DataFrame, schema: Schema, rows: np.ndarray) -> pd.DataFrame:
    """The model's covariate columns present in `covariates`, at `rows` (positions)."""
    cov_cols = [c for c in schema.covariates if c in covariates.columns]
    return covariates[cov_cols].iloc[rows].reset_index(drop=True)


def _rows(df: pd.DataFrame, schema: Schema, n: int, repeat: int) -> pd.DataFrame:
    """The `row` column (and the id column, if any) of a result, each row `repeat` times."""
    out = pd.DataFrame({"row": np.repeat(np.arange(n), repeat)})
    if schema.id and schema.id in df.columns:
        out[schema.id] = np.repeat(df[schema.id].astype(str).to_numpy(), repeat)
    return out
