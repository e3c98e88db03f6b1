"""evaluate() and the report: the documented summary, strict JSON, a self-contained page,
and miscalibration that is actually caught.

Two models are used. A tiny diffusion model (fit once) checks that the whole pipeline
runs on the real thing. An oracle that scores and samples with the synthetic benchmark's
exact truth checks the *numbers*: calibrated data must look calibrated, and data shifted
by 2 SD must not; a 20-epoch model is too rough to tell either apart.
"""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import plotly.offline
import pytest
from scipy import stats

from normcore import NormativeModel
from normcore.evaluate import EvaluationResult, evaluate, json_safe
from normcore.report import report_html, write_report
from normcore.schema import Schema
from normcore.synthetic import (
    SyntheticSpec,
    idp_names,
    simulate,
    true_cdf,
    true_correlation,
    true_quantiles,
)

SPEC = SyntheticSpec(n_idps=3)
TOP_LEVEL_KEYS = {
    "n", "n_idps", "date", "model", "data", "ace", "coverage_error", "coverage95_error",
    "pit_ks", "ks_age_bin", "strata", "energy_distance", "energy_distance_independent", "mmd",
    "mmd_independent", "correlation_error", "joint_vs_product", "pair_of_pair_mantel",
    "memorisation", "deviation", "seconds",
}  # fmt: skip


class TruthModel:
    """Scores and samples with the synthetic benchmark's exact conditional distribution.

    Implements the part of NormativeModel that `evaluate` uses. Deviation: the squared
    Mahalanobis distance of the exact normal scores under the true copula correlation is
    chi-square with D degrees of freedom, so its centile is exact too.
    """

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        self.schema = Schema(
            age="age", categorical=("sex", "site"), idps=tuple(idp_names(spec)), id="subject_id"
        )
        self.training_summary = {"n": 400, "age_range": list(spec.age_range)}
        self.config = SimpleNamespace(backbone="truth")
        self.created = "2026-01-01T00:00:00+00:00"
        self._corr = true_correlation(spec)

    def _z(self, df: pd.DataFrame) -> np.ndarray:
        return stats.norm.ppf(np.clip(true_cdf(self.spec, df), 1e-12, 1 - 1e-12))

    def score(self, df: pd.DataFrame) -> pd.DataFrame:
        p = true_cdf(self.spec, df)
        n, d = p.shape
        return pd.DataFrame(
            {
                "row": np.repeat(np.arange(n), d),
                "idp": np.tile(list(self.schema.idps), n),
                "centile": 100 * p.ravel(),
            }
        )

    def deviation(self, df: pd.DataFrame) -> pd.DataFrame:
        z = self._z(df)
        d2 = np.einsum("ij,jk,ik->i", z, np.linalg.inv(self._corr), z)
        return pd.DataFrame(
            {
                "row": np.arange(len(z)),
                "n_idps": z.shape[1],
                "mahalanobis": d2,
                "deviation_centile": 100 * stats.chi2.cdf(d2, z.shape[1]),
                "out_of_age_range": False,
                "unseen_levels": "",
            }
        )

    def sample(self, covariates: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
        rows = np.repeat(np.arange(len(covariates)), n)
        cov = covariates.iloc[rows].reset_index(drop=True)
        rng = np.random.default_rng(seed)
        g = rng.multivariate_normal(np.zeros(self.spec.n_idps), self._corr, size=len(cov))
        # Exact quantiles on a fine grid of normal scores, then linear interpolation at
        # each draw's own normal score (true_quantiles shares its probabilities across rows).
        grid = np.linspace(-5.0, 5.0, 401)
        q = true_quantiles(self.spec, cov, stats.norm.cdf(grid))  # (rows, D, grid)
        pos = np.clip(np.searchsorted(grid, g) - 1, 0, grid.size - 2)  # (rows, D)
        w = np.clip((g - grid[pos]) / (grid[1] - grid[0]), 0.0, 1.0)
        lower = np.take_along_axis(q, pos[..., None], axis=2)[..., 0]
        upper = np.take_along_axis(q, pos[..., None] + 1, axis=2)[..., 0]
        values = lower + w * (upper - lower)
        out = pd.concat([cov, pd.DataFrame(values, columns=list(self.schema.idps))], axis=1)
        out.insert(0, "grid_row", rows)
        return out


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return simulate(SPEC, 400, seed=1)


@pytest.fixture(scope="module")
def test_df() -> pd.DataFrame:
    return simulate(SPEC, 300, seed=2)


@pytest.fixture(scope="module")
def tiny(train: pd.DataFrame) -> NormativeModel:
    # Few sampling steps and one thread: this model only has to run, not to be good, and
    # two threads on a busy 2-core machine are far slower than one.
    model = NormativeModel(
        max_epochs=20, reference_samples=500, grid_points=11, sampling_steps=10, threads=1
    )
    return model.fit(train)


@pytest.fixture(scope="module")
def result(tiny: NormativeModel, test_df: pd.DataFrame, train: pd.DataFrame) -> EvaluationResult:
    return evaluate(tiny, test_df, n_generated=600, train_df=train)


def shift_rows(df: pd.DataFrame, rows: np.ndarray, sds: float) -> pd.DataFrame:
    """Add `sds` standard deviations of each IDP to the chosen rows."""
    out = df.copy()
    names = idp_names(SPEC)
    out.loc[rows, names] = out.loc[rows, names] + sds * df[names].std()
    return out


def walk_numbers(value: object) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in walk_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in walk_numbers(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    return []


# ---------------------------------------------------------------- the real model


def test_summary_has_the_documented_keys_and_finite_values(result: EvaluationResult) -> None:
    m = result.metrics
    assert set(m) == TOP_LEVEL_KEYS
    assert (m["n"], m["n_idps"]) == (300, 3)
    assert set(m["coverage_error"]) == {"0.5", "0.6", "0.7", "0.8", "0.9", "0.95", "0.99"}
    assert m["coverage95_error"] == m["coverage_error"]["0.95"]
    assert set(m["pit_ks"]) == {"mean", "max", "worst_idp", "fraction_significant"}
    assert set(m["ks_age_bin"]) == {
        "n_tests", "mean_statistic", "max_statistic", "fraction_bins_significant",
        "fraction_idps_fisher", "fraction_idps_stouffer",
    }  # fmt: skip
    assert set(m["strata"]) == {"n_evaluated", "n_too_small", "n_miscalibrated", "miscalibrated"}
    assert set(m["correlation_error"]) == {"pearson", "spearman", "independent_baseline"}
    assert set(m["joint_vs_product"]) >= {"n_pairs", "fraction_joint_better"}
    assert set(m["pair_of_pair_mantel"]) == {"statistic", "p_value", "n_pairs", "n_permutations"}
    assert set(m["memorisation"]) >= {"median_r", "p_r_lt_1", "wilson_low", "wilson_high"}
    assert set(m["deviation"]) == {
        "n", "ks_statistic", "ks_p_value", "fraction_above_95", "fraction_above_99",
    }  # fmt: skip
    assert m["model"]["backbone"] == "film" and m["model"]["n_train"] == 400
    numbers = walk_numbers(m)
    assert numbers and all(math.isfinite(x) for x in numbers)
    for value in (
        m["ace"], m["coverage95_error"], m["pit_ks"]["mean"], m["ks_age_bin"]["mean_statistic"],
        m["energy_distance"], m["mmd"], m["correlation_error"]["pearson"],
        m["pair_of_pair_mantel"]["statistic"], m["memorisation"]["p_r_lt_1"],
        m["deviation"]["ks_statistic"],
    ):  # fmt: skip
        assert value is not None


def test_tables_behind_the_summary(result: EvaluationResult, test_df: pd.DataFrame) -> None:
    idps = idp_names(SPEC)
    assert result.idps == idps and result.covariates == ["age", "sex", "site"]
    pit = result.pit[idps].to_numpy()
    assert pit.shape == (300, 3) and np.all((pit >= 0) & (pit <= 1))
    np.testing.assert_allclose(result.pit["age"], test_df["age"])
    assert len(result.coverage) == 3 * 7 and set(result.ks_idp["idp"]) == set(idps)
    assert result.ks_idp["statistic"].is_monotonic_decreasing
    assert {"site", "sex", "age_band", "sex x site", "age_band x sex x site"} <= set(
        result.strata["by"]
    )
    assert len(result.correlations) == 3 and len(result.dependence) == 3
    assert len(result.deviation) == 300 and result.deviation["pit"].between(0, 1).all()
    assert result.metrics["data"]["n_generated"] == 600  # 2 samples per person
    assert result.memorisation_r is not None and len(result.memorisation_r) == 600


def test_memorisation_ratios_are_the_ones_summarised(result: EvaluationResult) -> None:
    r = result.memorisation_r
    mem = result.metrics["memorisation"]
    assert np.median(r) == pytest.approx(mem["median_r"])
    assert np.mean(r < 1) == pytest.approx(mem["p_r_lt_1"])


def test_fewer_samples_than_people_and_no_training_table(
    tiny: NormativeModel, test_df: pd.DataFrame
) -> None:
    small = evaluate(tiny, test_df, n_generated=100)
    assert small.metrics["data"]["n_generated"] == 100
    assert small.metrics["memorisation"] is None and small.memorisation_r is None
    with pytest.raises(ValueError, match="n_generated"):
        evaluate(tiny, test_df, n_generated=0)


def test_a_failing_report_leaves_the_previous_files_whole(
    result: EvaluationResult, tmp_path, monkeypatch
) -> None:
    """Both files are built before either is written, and each is written whole: a
    report that fails half-way leaves the previous run's pair as it was."""
    import dataclasses

    from normcore import report

    before = [p.read_bytes() for p in write_report(result, tmp_path)]
    newer = dataclasses.replace(result, metrics={**result.metrics, "marker": 1})

    def broken(*args, **kwargs):
        raise RuntimeError("the figures failed")

    monkeypatch.setattr(report, "report_html", broken)
    with pytest.raises(RuntimeError):
        write_report(newer, tmp_path)
    after = [(tmp_path / name).read_bytes() for name in ("metrics.json", "report.html")]
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "report.html"]


def test_metrics_json_round_trips_and_report_is_self_contained(
    result: EvaluationResult, tmp_path
) -> None:
    metrics_path, report_path = write_report(result, tmp_path / "out", model_name="tiny.normcore")
    assert json.loads(metrics_path.read_text()) == result.metrics
    page = report_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    bundle_head = plotly.offline.get_plotlyjs()[:200]
    assert page.count(bundle_head) == 1  # plotly.js embedded exactly once
    assert '<script src="http' not in page and not re.search(
        r'<(script|link)[^>]+(src|href)="http', page
    )
    for heading in (
        "PIT histogram",
        "Coverage of central intervals",
        "Calibration per stratum",
        "Multivariate deviation",
        "Memorisation",
        "tiny.normcore",
    ):
        assert heading in page
    assert page.count('class="plotly-graph-div"') >= 10


def test_json_safe_turns_numpy_and_nan_into_strict_json() -> None:
    raw = {"a": np.nan, "b": np.float32(1.5), "c": [np.inf, np.int64(3)], "d": np.bool_(True),
           "e": (1, None), 7: "x"}  # fmt: skip
    safe = json_safe(raw)
    assert safe == {"a": None, "b": 1.5, "c": [None, 3], "d": True, "e": [1, None], "7": "x"}
    json.dumps(safe, allow_nan=False)


# ----------------------------------------------------------------- exact truth


@pytest.fixture(scope="module")
def oracle() -> TruthModel:
    return TruthModel(SPEC)


@pytest.fixture(scope="module")
def truth_result(oracle: TruthModel, test_df: pd.DataFrame) -> EvaluationResult:
    return evaluate(oracle, test_df, n_generated=600)


def test_exact_model_looks_calibrated(truth_result: EvaluationResult) -> None:
    m = truth_result.metrics
    assert abs(m["coverage95_error"]) < 0.04
    assert m["pit_ks"]["max"] < 1.36 / math.sqrt(300)  # below the 5% critical value
    assert m["pit_ks"]["fraction_significant"] == 0
    assert m["ace"] < 0.07
    sites = truth_result.strata[truth_result.strata["by"] == "site"]
    assert not sites["miscalibrated"].any()
    assert m["deviation"]["ks_statistic"] < 1.36 / math.sqrt(300)
    assert m["correlation_error"]["pearson"] < 0.5 * m["correlation_error"]["independent_baseline"]
    assert m["ks_age_bin"]["fraction_idps_fisher"] == 0


def test_shift_of_every_person_is_caught(oracle: TruthModel, test_df: pd.DataFrame) -> None:
    shifted = shift_rows(test_df, np.arange(len(test_df)), 2.0)
    m = evaluate(oracle, shifted, n_generated=300).metrics
    assert m["coverage95_error"] < -0.4
    assert m["pit_ks"]["mean"] > 0.5 and m["pit_ks"]["fraction_significant"] == 1
    assert m["ace"] > 0.2
    assert m["ks_age_bin"]["fraction_idps_fisher"] == 1
    assert m["deviation"]["fraction_above_95"] > 0.3


def test_shift_of_one_site_flags_that_site_only(
    oracle: TruthModel, test_df: pd.DataFrame, truth_result: EvaluationResult
) -> None:
    rows = np.flatnonzero(test_df["site"] == "S1")
    result = evaluate(oracle, shift_rows(test_df, rows, 2.0), n_generated=300)
    m = result.metrics
    assert m["coverage95_error"] < truth_result.metrics["coverage95_error"] - 0.1
    sites = result.strata[result.strata["by"] == "site"].set_index("site")
    assert sites.loc["S1", "miscalibrated"] and sites.loc["S1", "coverage95_error"] < -0.4
    assert not sites.loc[["S0", "S2"], "miscalibrated"].any()
    listed = {(s["by"], s["stratum"]) for s in m["strata"]["miscalibrated"]}
    assert ("site", "S1") in listed and ("site", "S0") not in listed
    page = report_html(result)
    assert "S1" in page and "Miscalibrated strata" in page
