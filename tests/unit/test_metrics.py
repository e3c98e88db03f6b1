"""Each metric against a case whose answer is known exactly or analytically."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import erf

from normcore import metrics


def grid_pit(n: int, d: int = 1) -> np.ndarray:
    """Perfectly uniform PIT values (i + 0.5) / n, the same in every column."""
    return np.tile(((np.arange(n) + 0.5) / n)[:, None], (1, d))


def shifted_pit(n: int, delta: float, d: int, seed: int) -> np.ndarray:
    """y ~ N(0, 1) scored by a model that believes N(delta, 1): pit = Phi(y - delta)."""
    y = np.random.default_rng(seed).standard_normal((n, d))
    return stats.norm.cdf(y - delta)


def bh_by_hand(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg written out: p_(i) * m / i, then running minimum from the top."""
    m = p.size
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1].clip(max=1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


# ------------------------------------------------------------------ marginal calibration


def test_ace_uniform_pit_is_zero_and_bins_hold_twenty_people():
    n = 400
    ages = np.linspace(20, 80, n)
    # every block of 40 consecutive people is itself a uniform grid
    pit = np.tile(((np.arange(n) % 40 + 0.5) / 40)[:, None], (1, 2))
    table = metrics.ace(pit, ages)
    assert set(table["quantile"]) == set(metrics.DEFAULT_QUANTILES)
    assert table["n"].min() >= 20
    assert table["age_bin"].nunique() == 10
    assert np.abs(table["error"]).max() <= 1 / 40 + 1e-12


def test_ace_known_shift():
    delta = 0.5
    pit = shifted_pit(40_000, delta, 1, seed=1)
    ages = np.random.default_rng(2).uniform(20, 80, 40_000)
    table = metrics.ace(pit, ages, age_bins=4)
    q = table["quantile"].to_numpy()
    expected = stats.norm.cdf(delta + stats.norm.ppf(q)) - q
    np.testing.assert_allclose(table["error"], expected, atol=0.02)
    summary = metrics.ace_summary(pit, ages, age_bins=4)
    qs = np.array(metrics.DEFAULT_QUANTILES)
    analytic = np.mean(np.abs(stats.norm.cdf(delta + stats.norm.ppf(qs)) - qs))
    assert summary == pytest.approx(analytic, abs=0.01)


def test_ace_default_bins_do_not_split_tied_ages_and_merge_short_tail():
    ages = np.repeat([30.0, 40.0, 50.0], [25, 25, 5])  # the 5 people at 50 are too few
    table = metrics.ace(grid_pit(55), ages, quantiles=[0.5])
    assert list(table["n"]) == [25, 30]
    assert list(table["age_low"]) == [30.0, 40.0]


def test_ace_cohort_of_one_age_is_one_bin():
    table = metrics.ace(grid_pit(30), np.full(30, 40.0), quantiles=[0.5])
    assert list(table["n"]) == [30] and table["error"].iloc[0] == pytest.approx(0.0)
    table = metrics.ace(grid_pit(30), np.full(30, 40.0), quantiles=[0.5], age_bins=3)
    assert list(table["n"]) == [30]


def test_ace_explicit_edges_leave_out_people_outside():
    ages = np.array([10.0] * 5 + [25.0] * 30)
    table = metrics.ace(grid_pit(35), ages, quantiles=[0.5], age_bins=[20, 30])
    assert list(table["n"]) == [30]


def test_pit_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.coverage(np.array([0.2, 1.5]))


def test_coverage_uniform_constant_and_shifted():
    grid = metrics.coverage(grid_pit(1000))
    assert np.abs(grid["error"]).max() <= 1e-3 + 1e-12
    centre = metrics.coverage(np.full((50, 1), 0.5))
    assert (centre["empirical"] == 1.0).all()
    delta = 0.5
    shifted = metrics.coverage(shifted_pit(40_000, delta, 1, seed=3))
    c = shifted["nominal"].to_numpy()
    expected = stats.norm.cdf(delta + stats.norm.ppf((1 + c) / 2)) - stats.norm.cdf(
        delta + stats.norm.ppf((1 - c) / 2)
    )
    np.testing.assert_allclose(shifted["empirical"], expected, atol=0.01)


def test_per_idp_tables_keep_column_order():
    names = list(metrics.coverage(grid_pit(20, 12), nominal=[0.5])["idp"])
    assert names == [str(j) for j in range(12)]  # not "0", "1", "10", "11", "2", ...
    ages = np.linspace(20, 80, 20)
    assert list(metrics.ace(grid_pit(20, 12), ages, quantiles=[0.5])["idp"]) == names


def test_coverage_skips_missing_values_per_idp():
    pit = grid_pit(100, 2)
    pit[:50, 1] = np.nan
    table = metrics.coverage(pit, nominal=[0.5])
    assert list(table["n"]) == [100, 50]
    # the remaining 50 values of idp 1 are all above 0.5: only those <= 0.75 are covered
    assert table["empirical"].iloc[1] == pytest.approx(0.5)


def test_pit_histogram_uniform_has_density_one_and_pooled_rows():
    hist = metrics.pit_histogram(pd.DataFrame(grid_pit(400, 2), columns=["a", "b"]), pooled=True)
    assert set(hist["idp"]) == {"a", "b", metrics.POOLED}
    assert len(hist) == 3 * 20
    np.testing.assert_allclose(hist["density"], 1.0)
    assert hist.loc[hist["idp"] == metrics.POOLED, "count"].sum() == 800


def test_pit_histogram_overconfident_model_is_u_shaped():
    # a model whose spread is half the truth: pit = Phi(2 y)
    y = np.random.default_rng(4).standard_normal(5000)
    hist = metrics.pit_histogram(stats.norm.cdf(2 * y), bins=10)
    d = hist["density"].to_numpy()
    assert d[0] > 1.5 and d[-1] > 1.5 and d[4] < 0.7


def test_pit_qq_uniform_is_diagonal():
    qq = metrics.pit_qq(grid_pit(1000), n_points=11)
    np.testing.assert_allclose(qq["empirical"], qq["uniform"], atol=1e-3)


def test_ks_uniform_exact_grid_and_squared_pit():
    n = 200
    table = metrics.ks_uniform(grid_pit(n))
    # for (i + 0.5) / n the largest gap to the uniform CDF is exactly half a step
    assert table["statistic"].iloc[0] == pytest.approx(0.5 / n)
    assert table["p_value"].iloc[0] > 0.99
    u = np.random.default_rng(5).uniform(size=4000)
    off = metrics.ks_uniform(u**2)  # CDF sqrt(x): sup |sqrt(x) - x| = 1/4
    assert off["statistic"].iloc[0] == pytest.approx(0.25, abs=0.02)
    assert off["p_value"].iloc[0] < 1e-10


def test_ks_uniform_is_scipys_test_per_idp_whatever_cells_are_missing():
    """All IDPs are tested at once where they have the same number of people; each must
    still be tested on its own values, wherever its blank cells are."""
    rng = np.random.default_rng(8)
    shapes = [1.0, 1.2, 0.8, 1.0, 1.5]
    pit = pd.DataFrame(rng.uniform(size=(60, 5)) ** shapes, columns=list("abcde"))
    pit.iloc[[0, 3, 7], 1] = np.nan
    pit.iloc[[10, 20, 30], 2] = np.nan  # as many blanks as b, in other rows
    pit.iloc[:, 4] = np.nan
    table = metrics.ks_uniform(pit)
    for j, name in enumerate("abcd"):
        x = pit[name].dropna().to_numpy()
        want = stats.ks_1samp(x, stats.uniform.cdf)
        assert table["n"].iloc[j] == len(x)
        assert table["statistic"].iloc[j] == pytest.approx(want.statistic, abs=1e-12)
        assert table["p_value"].iloc[j] == pytest.approx(want.pvalue, abs=1e-12)
    assert table["n"].iloc[4] == 0 and table[["statistic", "p_value"]].iloc[4].isna().all()


# ------------------------------------------------------------------- two-sample KS


def _ks_data(shift: float):
    rng = np.random.default_rng(6)
    real_age = rng.uniform(20, 80, 600)
    gen_age = rng.uniform(20, 80, 1200)
    real = rng.standard_normal((600, 2)) + real_age[:, None] / 20
    gen = rng.standard_normal((1200, 2)) + gen_age[:, None] / 20
    gen[:, 1] += shift
    return real, gen, real_age, gen_age


def test_ks_by_age_bin_detects_a_shifted_idp_only():
    real, gen, real_age, gen_age = _ks_data(shift=1.0)
    table = metrics.ks_by_age_bin(real, gen, real_age, gen_age, bins=[20, 40, 60, 80])
    assert len(table) == 6
    good, bad = table[table["idp"] == "0"], table[table["idp"] == "1"]
    assert (good["p_adjusted"] > 0.01).all()
    assert (bad["p_adjusted"] < 1e-6).all()
    assert (bad["statistic"] > 0.25).all()
    summary = metrics.ks_summary(table).set_index("idp")
    assert summary.loc["1", "n_significant"] == 3
    assert summary.loc["0", "fisher_p"] > 0.01
    assert summary.loc["1", "max_statistic"] >= summary.loc["1", "mean_statistic"]


def test_ks_by_age_bin_bh_within_each_idp_matches_hand_computation():
    real, gen, real_age, gen_age = _ks_data(shift=0.3)
    table = metrics.ks_by_age_bin(real, gen, real_age, gen_age, bins=6)
    for _, group in table.groupby("idp"):
        np.testing.assert_allclose(group["p_adjusted"], bh_by_hand(group["p_value"].to_numpy()))


def test_bh_by_hand_reference_on_a_textbook_example():
    p = np.array([0.01, 0.04, 0.03, 0.20])
    np.testing.assert_allclose(bh_by_hand(p), [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.20])


def test_ks_by_age_bin_skips_sparse_bins():
    real, gen, real_age, gen_age = _ks_data(shift=0.0)
    keep = real_age > 30  # no real people under 30
    table = metrics.ks_by_age_bin(
        real[keep], gen, real_age[keep], gen_age, bins=[20, 30, 80], min_count=10
    )
    assert set(table["age_bin"]) == {1}


@pytest.mark.parametrize("method", ["fisher", "stouffer"])
def test_combine_pvalues_matches_scipy(method):
    p = np.array([0.01, 0.2, 0.5, 0.03, 0.9])
    expected = stats.combine_pvalues(p, method=method).pvalue
    assert metrics.combine_pvalues(p, method=method) == pytest.approx(expected, rel=1e-12)


def test_combine_pvalues_survives_exact_zero_and_one():
    # an exact 0 is overwhelming evidence; the exact 1 must not turn it into NaN
    assert metrics.combine_pvalues([0.0, 1.0], "stouffer") < 1e-10
    assert metrics.combine_pvalues([0.0, 0.5], "fisher") < 1e-100


# ------------------------------------------------------------------ per-stratum calibration


def test_age_bands_default_decades_and_explicit_edges():
    bands = metrics.age_bands(pd.Series([20.0, 25.0, 30.0, 79.9, 80.0], index=list("abcde")))
    assert list(bands.astype(str)) == ["20-30", "20-30", "30-40", "70-80", "80-90"]
    assert list(bands.index) == list("abcde")
    assert bands.cat.ordered
    custom = metrics.age_bands([18.0, 40.0, 65.0, 90.0], edges=[18, 40, 65])
    assert list(custom.astype(object)) == ["18-40", "40-65", "40-65", np.nan]


def test_calibration_by_stratum_flags_only_the_bad_site():
    rng = np.random.default_rng(7)
    n = 1200
    strata = pd.DataFrame(
        {
            "sex": rng.choice(["F", "M"], n),
            "site": np.repeat(["S0", "S1", "S2"], n // 3),
        }
    )
    pit = rng.uniform(size=(n, 3))
    bad = (strata["site"] == "S2").to_numpy()
    pit[bad] = pit[bad] ** 2
    strata.loc[:3, "site"] = "S9"  # a stratum too small to judge
    table = metrics.calibration_by_stratum(pit, strata, min_count=10)
    judged = table[table["evaluated"]]
    assert set(judged.loc[judged["miscalibrated"], "site"]) == {"S2"}
    assert judged.loc[judged["site"] == "S2", "ks_mean"].min() > 0.15
    assert (judged.loc[judged["site"] != "S2", "ace"] < 0.06).all()
    small = table[table["site"] == "S9"]
    assert not small["evaluated"].any() and small["ks_mean"].isna().all()
    assert not small["miscalibrated"].any()
    assert "F / S0" in set(table["stratum"])


def test_calibration_by_stratum_coverage_error_of_constant_pit():
    strata = pd.DataFrame({"site": ["A"] * 30})
    table = metrics.calibration_by_stratum(np.full((30, 2), 0.5), strata)
    assert table["coverage95_error"].iloc[0] == pytest.approx(0.05)


# ----------------------------------------------------------------------- dependence


def test_correlation_error_sign_flip_is_twice_the_correlation():
    rng = np.random.default_rng(8)
    real = rng.multivariate_normal([0, 0], [[1, 0.6], [0.6, 1]], size=500)
    flipped = real * np.array([1.0, -1.0])
    r = np.corrcoef(real, rowvar=False)[0, 1]
    assert metrics.correlation_error(real, flipped) == pytest.approx(2 * abs(r))
    rho = stats.spearmanr(real[:, 0], real[:, 1]).statistic
    got = metrics.correlation_error(real, flipped, method="spearman")
    assert got == pytest.approx(2 * abs(rho))
    assert metrics.correlation_error(real, real) == pytest.approx(0.0, abs=1e-12)


def test_energy_distance_identical_is_zero_and_shift_matches_analytic():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((300, 3))
    assert metrics.energy_distance(x, x) == 0.0
    # N(0,1) vs N(1,1): 2 E|X-Y| - E|X-X'| - E|Y-Y'| with X-Y ~ N(-1, 2), X-X' ~ N(0, 2)
    analytic = 4 / math.sqrt(math.pi) * (math.exp(-0.25) - 1) + 2 * erf(0.5)
    a = rng.standard_normal(2000)
    b = rng.standard_normal(2000) + 1.0
    assert metrics.energy_distance(a, b) == pytest.approx(analytic, abs=0.05)
    # larger inputs are subsampled: the answer stays right
    a = rng.standard_normal(5000)
    b = rng.standard_normal(5000) + 1.0
    assert metrics.energy_distance(a, b, max_n=1500) == pytest.approx(analytic, abs=0.06)


def test_mmd_same_distribution_near_zero_and_shift_matches_analytic():
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal((1000, 2)), rng.standard_normal((1000, 2))
    assert abs(metrics.mmd_rbf(x, y)) < 0.01
    # bandwidth s = 1, N(0,1) vs N(1,1): 2 s / sqrt(s^2 + 2) * (1 - exp(-1 / (2 (s^2 + 2))))
    analytic = 2 / math.sqrt(3) * (1 - math.exp(-1 / 6))
    a, b = rng.standard_normal(2000), rng.standard_normal(2000) + 1.0
    assert metrics.mmd_rbf(a, b, bandwidth=1.0) == pytest.approx(analytic, abs=0.02)
    assert metrics.mmd_rbf(a, b) > 0.05


def test_median_bandwidth_of_two_points():
    assert metrics.median_bandwidth([[0.0, 0.0]], [[3.0, 4.0]]) == pytest.approx(5.0)


def _correlated(n: int, rho: float, d: int, seed: int) -> np.ndarray:
    cov = np.full((d, d), rho) + (1 - rho) * np.eye(d)
    return np.random.default_rng(seed).multivariate_normal(np.zeros(d), cov, size=n)


def test_pairwise_dependence_joint_beats_product_only_when_dependence_learned():
    real = _correlated(800, 0.8, 3, seed=11) * [1.0, 10.0, 100.0]
    learned = _correlated(800, 0.8, 3, seed=12) * [1.0, 10.0, 100.0]
    good = metrics.pairwise_dependence(pd.DataFrame(real, columns=list("xyz")), learned)
    assert len(good) == 3 and list(good["idp_a"]) == ["x", "x", "y"]
    assert good["joint_better"].all()
    assert (good["mmd_joint"] < good["mmd_product"]).all()
    independent = _correlated(800, 0.0, 3, seed=13) * [1.0, 10.0, 100.0]
    bad = metrics.pairwise_dependence(real, independent)
    # an independent model is no better than its own permuted version
    np.testing.assert_allclose(bad["energy_joint"], bad["energy_product"], rtol=0.5)
    assert (bad["energy_joint"] > 5 * good["energy_joint"]).all()


def test_pairwise_dependence_samples_pairs():
    data = _correlated(100, 0.5, 12, seed=14)
    table = metrics.pairwise_dependence(data, data, max_pairs=5, max_n=50)
    assert len(table) == 5
    given = metrics.pairwise_dependence(data, data, pairs=[(0, 11)])
    assert list(given["idp_b"]) == ["11"]
    with pytest.raises(ValueError, match="pair"):
        metrics.pairwise_dependence(data, data, pairs=[(3, 3)])


def test_mantel_identical_matrices_and_unrelated_matrices():
    rng = np.random.default_rng(15)
    m = rng.standard_normal((12, 12))
    a = m + m.T
    stat, p = metrics.mantel(a, a, n_permutations=199)
    assert stat == pytest.approx(1.0)
    assert p == pytest.approx(1 / 200)
    b = rng.standard_normal((12, 12))
    stat, p = metrics.mantel(a, b + b.T, n_permutations=199)
    assert abs(stat) < 0.35 and p > 0.01


def _two_factor(n: int, seed: int, d: int = 8) -> np.ndarray:
    """IDPs from two shared factors with fixed loadings of mixed signs (so dependence
    shapes differ by pair) and one non-linear (quadratic) IDP."""
    loadings = np.random.default_rng(100).uniform(-1, 1, (d, 2))
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((n, 2))
    x = f @ loadings.T + 0.5 * rng.standard_normal((n, d))
    x[:, 0] += 0.8 * f[:, 0] ** 2
    return x


def test_pair_of_pair_mantel_keeps_structure_and_loses_it_when_independent():
    real = _two_factor(1000, seed=16)
    same = metrics.pair_of_pair_mantel(real, _two_factor(1000, seed=17), n_permutations=199)
    assert same["n_pairs"] == 28
    assert same["statistic"] > 0.7 and same["p_value"] <= 0.01
    rng = np.random.default_rng(18)
    shuffled = np.column_stack([rng.permutation(c) for c in _two_factor(1000, seed=17).T])
    lost = metrics.pair_of_pair_mantel(real, shuffled, n_permutations=199)
    assert abs(lost["statistic"]) < 0.3 and lost["p_value"] > 0.05


# --------------------------------------------------------------------- memorisation


def test_wilson_interval_known_values_and_scipy_agreement():
    assert metrics.wilson_interval(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)
    assert metrics.wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-6)
    # hand formula: centre (p + z^2/2n) / (1 + z^2/n), half z sqrt(p(1-p)/n + z^2/4n^2) / (...)
    k, n, z = 37, 120, stats.norm.ppf(0.95)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    got = metrics.wilson_interval(k, n, level=0.90)
    assert got == pytest.approx((centre - half, centre + half), abs=1e-9)
    with pytest.raises(ValueError):
        metrics.wilson_interval(3, 2)


def test_memorisation_of_copies_versus_fresh_samples():
    rng = np.random.default_rng(19)
    train = rng.standard_normal((500, 4)) * [1, 2, 3, 4]
    heldout = rng.standard_normal((500, 4)) * [1, 2, 3, 4]
    copies = train[:300] + rng.normal(scale=1e-3, size=(300, 4))
    memorised = metrics.memorisation(copies, train, heldout)
    assert memorised["p_r_lt_1"] == 1.0
    assert memorised["near_duplicate_rate"] == 1.0
    assert memorised["median_r"] < 0.01
    assert memorised["wilson_low"] > 0.98
    fresh = rng.standard_normal((2000, 4)) * [1, 2, 3, 4]
    honest = metrics.memorisation(fresh, train, heldout)
    assert honest["wilson_low"] < 0.5 < honest["wilson_high"]
    assert honest["median_r"] == pytest.approx(1.0, abs=0.1)
    assert honest["near_duplicate_rate"] < 0.05
    assert honest["n"] == 2000 and honest["n_reference"] == 500


def test_memorisation_balances_reference_sets():
    rng = np.random.default_rng(20)
    train = rng.standard_normal((2000, 2))
    heldout = rng.standard_normal((200, 2))
    fresh = rng.standard_normal((1000, 2))
    result = metrics.memorisation(fresh, train, heldout)
    # without balancing, the 10x denser training set would be nearer almost always
    assert result["n_reference"] == 200
    assert 0.4 < result["p_r_lt_1"] < 0.6
