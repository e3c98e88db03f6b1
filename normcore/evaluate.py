"""Evaluate a fitted normative model on a table of (held-out) people.

`evaluate` turns a model and a table into every number of the evaluation suite
(Whitbread, Palmer & Jenkinson, arXiv 2602.04886, plus calibration per stratum and the
multivariate deviation) and the
tables behind them. It only orchestrates: each number comes from a pure function in
`normcore.metrics`, so the CLI report, the dashboard's Diagnostics page and the
benchmarks agree exactly.

Two kinds of evidence are used:

* PIT values: the model's centile of each person's own value at their own covariates
  (`model.score`). For a calibrated model and held-out people they are Uniform(0, 1).
* Generated data: model samples drawn at the evaluated people's own covariates, so that
  the real and generated sets share the covariate distribution and can be compared
  directly (two-sample KS per age bin, dependence, memorisation).

Costs are capped so that a full evaluation of ~500 people x ~200 IDPs stays well under
a minute on a laptop CPU: sampling dominates (one network pass per sampling step per
generated row), and pairwise statistics use a seeded subset of IDP pairs and rows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import cKDTree

from normcore import metrics
from normcore.schema import coerce_categories

SIGNIFICANCE = 0.05
"""Level at which BH-adjusted p-values flag an IDP, an age bin or a stratum."""
MAX_DEPENDENCE_PAIRS = 50
"""IDP pairs used for the per-pair energy distance / MMD (seeded sample beyond this)."""
MAX_MANTEL_PAIRS = 60
"""IDP pairs whose density shapes enter the pair-of-pair Mantel comparison."""
MAX_PAIR_ROWS = 500
"""Rows per sample in the per-pair statistics (the cost is quadratic in rows)."""
MAX_JOINT_ROWS = 1000
"""Rows per sample in the all-IDP energy distance and MMD."""
MAX_LISTED_STRATA = 25
"""Miscalibrated strata listed by name in the metric summary (all are in the table)."""


@dataclass
class EvaluationResult:
    """Everything `evaluate` found: a JSON-safe summary and the tables behind it.

    Attributes
    ----------
    metrics: the summary (see `evaluate` for its keys); already JSON-safe (NaN -> None).
    pit: one row per person: ``row``, the covariates, then one column per IDP holding the
        PIT value (model centile / 100) at the person's own covariates.
    coverage: `metrics.coverage` of the PIT values (idp, nominal, n, empirical, error).
    ace: `metrics.ace` (idp, quantile, age_bin, age_low, age_high, n, fraction, error).
    ks_idp: one-sample KS of each IDP's PIT values vs U(0, 1), with ``p_adjusted``
        (Benjamini-Hochberg across IDPs) and ``flagged`` (p_adjusted < 0.05).
    ks_age: two-sample KS real vs generated per IDP and age bin (`metrics.ks_by_age_bin`).
    strata: `metrics.calibration_by_stratum` for every grouping of age band and the
        categorical covariates (singles, pairs, ...), stacked; ``by`` names the grouping.
    dependence: `metrics.pairwise_dependence` on a seeded subset of IDP pairs.
    correlations: every IDP pair's real and model (generated) Pearson and Spearman
        correlation (idp_a, idp_b, real_pearson, model_pearson, real_spearman,
        model_spearman).
    deviation: `model.deviation` per person, with the covariates, plus ``pit``
        (deviation centile / 100).
    memorisation_r: per generated row, nearest-training / nearest-held-out distance
        ratio (None without a training table).
    idps, covariates: column names, in the model's order.
    """

    metrics: dict
    pit: pd.DataFrame
    coverage: pd.DataFrame
    ace: pd.DataFrame
    ks_idp: pd.DataFrame
    ks_age: pd.DataFrame
    strata: pd.DataFrame
    dependence: pd.DataFrame
    correlations: pd.DataFrame
    deviation: pd.DataFrame
    memorisation_r: np.ndarray | None
    idps: list[str]
    covariates: list[str]


def evaluate(
    model: Any,
    df: pd.DataFrame,
    *,
    n_generated: int = 2000,
    seed: int = 0,
    train_df: pd.DataFrame | None = None,
) -> EvaluationResult:
    """Evaluate `model` (a fitted `NormativeModel`) on the people in `df`.

    `df` should hold people the model did not see in training (PIT values of training
    people are pulled towards uniform by the fit itself). `n_generated` caps the model
    samples drawn for the generated-data metrics: one per person, repeated until about
    `n_generated` rows (a seeded subset of people when `df` has more rows than that).
    `train_df`, when given, is the model's training table and enables the memorisation
    test (the evaluated people act as the held-out set).

    Metric keys (values are None where a metric does not apply, e.g. dependence with one
    IDP or memorisation without `train_df`):

    * model: backbone, n_train, age_range, created; data: n, n_idps, n_generated,
      n_out_of_age_range, n_unseen_levels; n, n_idps (repeated at top level); date.
    * ace: the paper's ACE (mean |empirical - nominal| over age bins, IDPs, quantiles).
    * coverage_error: {"0.5": ..., ..., "0.99": ...}, mean over IDPs of empirical -
      nominal coverage of the central interval; coverage95_error: the 0.95 entry.
    * pit_ks: mean, max, worst_idp, fraction_significant (BH across IDPs, p < 0.05).
    * ks_age_bin: n_tests, mean_statistic, max_statistic, fraction_bins_significant
      (BH within IDP), fraction_idps_fisher, fraction_idps_stouffer (combined p per
      IDP, BH across IDPs, < 0.05).
    * strata: n_evaluated, n_too_small, n_miscalibrated, miscalibrated (list of
      {by, stratum, n, ks_mean, coverage95_error, p_adjusted}, worst first).
    * correlation_error: pearson, spearman, independent_baseline (mean |real r|, what a
      model with independent IDPs would score).
    * energy_distance, energy_distance_independent, mmd, mmd_independent: all IDPs
      together on standardised values; *_independent scores the generated data with its
      columns permuted independently (dependence destroyed), as a reference.
    * joint_vs_product: n_pairs, fraction_joint_better, energy_joint_mean,
      energy_product_mean, mmd_joint_mean, mmd_product_mean.
    * pair_of_pair_mantel: statistic, p_value, n_pairs, n_permutations.
    * memorisation: median_r, p_r_lt_1, wilson_low, wilson_high, near_duplicate_rate,
      n, n_reference.
    * deviation: n, ks_statistic, ks_p_value, fraction_above_95, fraction_above_99.
    * seconds: wall time of each step and the total.
    """
    start = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(step: str, since: float) -> float:
        now = time.perf_counter()
        seconds[step] = round(now - since, 3)
        return now

    schema = model.schema
    idps = list(schema.idps)
    df = df.reset_index(drop=True)
    covariates = _covariate_frame(df, schema)

    scores = model.score(df)
    pit = _pit_wide(scores, idps, len(df))
    deviation = model.deviation(df)
    t = lap("score", start)

    generated = _generate(model, covariates, n_generated, seed)
    t = lap("sample", t)

    ages = covariates[schema.age].to_numpy(dtype=float)
    coverage = metrics.coverage(pit)
    ace = metrics.ace(pit, ages)
    ks_idp = _ks_per_idp(pit)
    strata = _strata(pit, covariates, schema)
    t = lap("calibration", t)

    real = df[idps].apply(pd.to_numeric).to_numpy(dtype=float)
    gen = generated[idps].to_numpy(dtype=float)
    gen_ages = generated[schema.age].to_numpy(dtype=float)
    ks_age = metrics.ks_by_age_bin(_named(real, idps), _named(gen, idps), ages, gen_ages)
    t = lap("ks_age_bin", t)

    dependence, correlations, dependence_metrics = _dependence(real, gen, idps, seed)
    t = lap("dependence", t)

    memorisation_r = None
    memorisation = None
    if train_df is not None:
        train = train_df[idps].apply(pd.to_numeric).to_numpy(dtype=float)
        memorisation = metrics.memorisation(gen, train, real, seed=seed)
        memorisation_r = _memorisation_ratios(gen, train, real, seed)
        t = lap("memorisation", t)

    deviation = pd.concat([covariates, deviation.drop(columns=["row"])], axis=1)
    deviation.insert(0, "row", np.arange(len(deviation)))
    deviation["pit"] = deviation["deviation_centile"] / 100.0
    seconds["total"] = round(time.perf_counter() - start, 3)

    summary: dict[str, Any] = {
        "n": len(df),
        "n_idps": len(idps),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": _model_info(model),
        "data": {
            "n": len(df),
            "n_idps": len(idps),
            "n_generated": len(generated),
            "n_out_of_age_range": int(deviation["out_of_age_range"].sum()),
            "n_unseen_levels": int((deviation["unseen_levels"] != "").sum()),
        },
        "ace": float(np.nanmean(np.abs(ace["error"].to_numpy()))),
        **_coverage_summary(coverage),
        "pit_ks": _pit_ks_summary(ks_idp),
        "ks_age_bin": _ks_age_summary(ks_age),
        "strata": _strata_summary(strata),
        **dependence_metrics,
        "memorisation": memorisation,
        "deviation": _deviation_summary(deviation["pit"].to_numpy(dtype=float)),
        "seconds": seconds,
    }
    pit_table = pd.concat([pd.DataFrame({"row": np.arange(len(df))}), covariates, pit], axis=1)
    return EvaluationResult(
        metrics=json_safe(summary),
        pit=pit_table,
        coverage=coverage,
        ace=ace,
        ks_idp=ks_idp,
        ks_age=ks_age,
        strata=strata,
        dependence=dependence,
        correlations=correlations,
        deviation=deviation,
        memorisation_r=memorisation_r,
        idps=idps,
        covariates=list(covariates.columns),
    )


# ------------------------------------------------------------------------- inputs


def _covariate_frame(df: pd.DataFrame, schema: Any) -> pd.DataFrame:
    """Age (numeric) and the categorical covariates (as the model's category strings)."""
    out = pd.DataFrame({schema.age: pd.to_numeric(df[schema.age]).to_numpy(dtype=float)})
    for col in schema.categorical:
        if col in df.columns:
            out[col] = coerce_categories(df[col]).to_numpy()
    return out


def _pit_wide(scores: pd.DataFrame, idps: list[str], n: int) -> pd.DataFrame:
    """PIT values (centile / 100) as a people x IDPs table in the model's IDP order."""
    wide = scores.pivot(index="row", columns="idp", values="centile")
    wide = wide.reindex(index=range(n), columns=idps) / 100.0
    return wide.reset_index(drop=True).rename_axis(columns=None)


def _named(values: np.ndarray, idps: list[str]) -> pd.DataFrame:
    """Name the columns of an IDP matrix so that metric tables carry the IDP names."""
    return pd.DataFrame(values, columns=idps)


def _generate(model: Any, covariates: pd.DataFrame, n_generated: int, seed: int) -> pd.DataFrame:
    """Model samples at the evaluated people's own covariates, about `n_generated` rows.

    One sample per person, repeated ceil(n_generated / n) times; with more people than
    `n_generated`, one sample for each of a seeded subset of `n_generated` people.
    """
    if n_generated < 1:
        raise ValueError("n_generated must be at least 1")
    n = len(covariates)
    if n >= n_generated:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=n_generated, replace=False))
        return model.sample(covariates.iloc[keep].reset_index(drop=True), 1, seed=seed)
    return model.sample(covariates, math.ceil(n_generated / n), seed=seed)


def _model_info(model: Any) -> dict:
    training = model.training_summary
    return {
        "backbone": model.config.backbone,
        "n_train": training.get("n"),
        "age_range": training.get("age_range"),
        "created": model.created,
    }


# ---------------------------------------------------------------------- calibration


def _ks_per_idp(pit: pd.DataFrame) -> pd.DataFrame:
    """`metrics.ks_uniform` plus BH across IDPs, sorted worst first."""
    ks = metrics.ks_uniform(pit)
    ks["p_adjusted"] = np.nan
    tested = ks["p_value"].notna().to_numpy()
    if tested.any():
        ks.loc[tested, "p_adjusted"] = stats.false_discovery_control(
            ks.loc[tested, "p_value"].to_numpy()
        )
    ks["flagged"] = (ks["p_adjusted"] < SIGNIFICANCE).to_numpy(dtype=bool)
    return ks.sort_values("statistic", ascending=False, ignore_index=True)


def _strata(pit: pd.DataFrame, covariates: pd.DataFrame, schema: Any) -> pd.DataFrame:
    """Calibration per stratum for every grouping of age band and the categoricals.

    Single factors catch "off for one site"; crossings catch "off for old women at one
    site", but their strata are often too small to judge (listed, not evaluated). BH runs
    within each grouping.
    """
    factors = pd.DataFrame({"age_band": metrics.age_bands(covariates[schema.age]).astype(str)})
    for col in schema.categorical:
        if col in covariates.columns:
            factors[col] = covariates[col].astype(str)
    names = list(factors.columns)
    frames = []
    for size in range(1, min(len(names), 3) + 1):
        for combo in combinations(names, size):
            table = metrics.calibration_by_stratum(pit, factors[list(combo)])
            table.insert(0, "by", " x ".join(combo))
            frames.append(table)
    out = pd.concat(frames, ignore_index=True)
    return out[["by", *names, *[c for c in out.columns if c not in ("by", *names)]]]


def _coverage_summary(coverage: pd.DataFrame) -> dict:
    by_level = coverage.groupby("nominal")["error"].mean()
    curve = {f"{level:g}": float(err) for level, err in by_level.items()}
    return {"coverage_error": curve, "coverage95_error": curve.get("0.95")}


def _pit_ks_summary(ks: pd.DataFrame) -> dict:
    worst = ks.iloc[int(ks["statistic"].to_numpy().argmax())] if len(ks) else None
    return {
        "mean": float(ks["statistic"].mean()),
        "max": float(ks["statistic"].max()),
        "worst_idp": None if worst is None else str(worst["idp"]),
        "fraction_significant": float(ks["flagged"].mean()),
    }


def _ks_age_summary(ks_age: pd.DataFrame) -> dict:
    """Across IDPs and age bins; combined p-values are per IDP, then BH across IDPs."""
    if ks_age.empty:
        return {
            "n_tests": 0,
            "mean_statistic": None,
            "max_statistic": None,
            "fraction_bins_significant": None,
            "fraction_idps_fisher": None,
            "fraction_idps_stouffer": None,
        }
    per_idp = metrics.ks_summary(ks_age)
    out = {
        "n_tests": len(ks_age),
        "mean_statistic": float(ks_age["statistic"].mean()),
        "max_statistic": float(ks_age["statistic"].max()),
        "fraction_bins_significant": float((ks_age["p_adjusted"] < SIGNIFICANCE).mean()),
    }
    for method in ("fisher", "stouffer"):
        adjusted = stats.false_discovery_control(per_idp[f"{method}_p"].to_numpy())
        out[f"fraction_idps_{method}"] = float(np.mean(adjusted < SIGNIFICANCE))
    return out


def _strata_summary(strata: pd.DataFrame) -> dict:
    flagged = strata[strata["miscalibrated"]].sort_values("p_adjusted", kind="stable")
    listed = [
        {
            "by": row["by"],
            "stratum": row["stratum"],
            "n": int(row["n"]),
            "ks_mean": row["ks_mean"],
            "coverage95_error": row["coverage95_error"],
            "p_adjusted": row["p_adjusted"],
        }
        for _, row in flagged.head(MAX_LISTED_STRATA).iterrows()
    ]
    evaluated = strata["evaluated"].to_numpy(dtype=bool)
    return {
        "n_evaluated": int(evaluated.sum()),
        "n_too_small": int((~evaluated).sum()),
        "n_miscalibrated": len(flagged),
        "miscalibrated": listed,
    }


def _deviation_summary(pit: np.ndarray) -> dict:
    """Deviation centiles of held-out controls should be Uniform(0, 1): KS and tails."""
    pit = pit[np.isfinite(pit)]
    ks = stats.ks_1samp(pit, stats.uniform.cdf) if pit.size else None
    return {
        "n": int(pit.size),
        "ks_statistic": None if ks is None else float(ks.statistic),
        "ks_p_value": None if ks is None else float(ks.pvalue),
        "fraction_above_95": float(np.mean(pit > 0.95)) if pit.size else None,
        "fraction_above_99": float(np.mean(pit > 0.99)) if pit.size else None,
    }


# ----------------------------------------------------------------------- dependence


def _dependence(
    real: np.ndarray, gen: np.ndarray, idps: list[str], seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Pairwise table, correlation table and the dependence part of the summary."""
    rng = np.random.default_rng(seed)
    mean, sd = real.mean(axis=0), real.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    real_std, gen_std = (real - mean) / sd, (gen - mean) / sd
    independent = np.column_stack([rng.permutation(col) for col in gen_std.T])
    out: dict[str, Any] = {
        "energy_distance": metrics.energy_distance(real_std, gen_std, MAX_JOINT_ROWS, seed),
        "energy_distance_independent": metrics.energy_distance(
            real_std, independent, MAX_JOINT_ROWS, seed
        ),
        "mmd": metrics.mmd_rbf(real_std, gen_std, max_n=MAX_JOINT_ROWS, seed=seed),
        "mmd_independent": metrics.mmd_rbf(real_std, independent, max_n=MAX_JOINT_ROWS, seed=seed),
    }
    if len(idps) < 2:
        empty_pairs = pd.DataFrame(columns=list(metrics.PAIRWISE_COLUMNS))
        empty_corr = pd.DataFrame(
            columns=[
                "idp_a",
                "idp_b",
                "real_pearson",
                "model_pearson",
                "real_spearman",
                "model_spearman",
            ]
        )
        out.update(correlation_error=None, joint_vs_product=None, pair_of_pair_mantel=None)
        return empty_pairs, empty_corr, out

    correlations = _correlation_table(real, gen, idps)
    out["correlation_error"] = {
        "pearson": metrics.correlation_error(real, gen, "pearson"),
        "spearman": metrics.correlation_error(real, gen, "spearman"),
        "independent_baseline": float(correlations["real_pearson"].abs().mean()),
    }
    pairs = metrics.pairwise_dependence(
        _named(real, idps),
        _named(gen, idps),
        max_pairs=MAX_DEPENDENCE_PAIRS,
        max_n=MAX_PAIR_ROWS,
        seed=seed,
    )
    out["joint_vs_product"] = {
        "n_pairs": len(pairs),
        "fraction_joint_better": float(pairs["joint_better"].mean()),
        "energy_joint_mean": float(pairs["energy_joint"].mean()),
        "energy_product_mean": float(pairs["energy_product"].mean()),
        "mmd_joint_mean": float(pairs["mmd_joint"].mean()),
        "mmd_product_mean": float(pairs["mmd_product"].mean()),
    }
    out["pair_of_pair_mantel"] = (
        metrics.pair_of_pair_mantel(real, gen, max_pairs=MAX_MANTEL_PAIRS, seed=seed)
        if len(idps) >= 3
        else None
    )
    return pairs, correlations, out


def _correlation_table(real: np.ndarray, gen: np.ndarray, idps: list[str]) -> pd.DataFrame:
    """Every off-diagonal pair's real and model correlations (for the scatter figure)."""
    upper = np.triu_indices(len(idps), k=1)
    names = np.asarray(idps, dtype=object)
    table = pd.DataFrame({"idp_a": names[upper[0]], "idp_b": names[upper[1]]})
    for label, x in (("real", real), ("model", gen)):
        table[f"{label}_pearson"] = np.corrcoef(x, rowvar=False)[upper]
        table[f"{label}_spearman"] = np.corrcoef(stats.rankdata(x, axis=0), rowvar=False)[upper]
    return table[
        ["idp_a", "idp_b", "real_pearson", "model_pearson", "real_spearman", "model_spearman"]
    ]


# --------------------------------------------------------------------- memorisation


def _memorisation_ratios(
    gen: np.ndarray, train: np.ndarray, heldout: np.ndarray, seed: int
) -> np.ndarray:
    """Per generated row, r = d(nearest training row) / d(nearest held-out row).

    The same balanced subsets and standardisation as `metrics.memorisation` (same seed,
    same draws), which returns only the summary; the figure needs the distribution.
    """
    tr, ho = train[np.all(np.isfinite(train), axis=1)], heldout[np.all(np.isfinite(heldout), 1)]
    gen = gen[np.all(np.isfinite(gen), axis=1)]
    m = min(len(tr), len(ho))
    rng = np.random.default_rng(seed)
    tr, ho = (x if len(x) <= m else x[rng.choice(len(x), size=m, replace=False)] for x in (tr, ho))
    mean, sd = tr.mean(axis=0), tr.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    tr, ho, gen = ((x - mean) / sd for x in (tr, ho, gen))
    d_train, _ = cKDTree(tr).query(gen, k=1)
    d_heldout, _ = cKDTree(ho).query(gen, k=1)
    both_zero = (d_train == 0) & (d_heldout == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(both_zero, 1.0, d_train / d_heldout)


# ------------------------------------------------------------------------ JSON


def json_safe(value: Any) -> Any:
    """Plain Python containers and scalars only, with NaN and infinities as None.

    So that `json.dumps(..., allow_nan=False)` succeeds and the file is strict JSON that
    every reader (browsers, R's jsonlite) accepts.
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if pd.isna(value):
        return None
    return str(value)
