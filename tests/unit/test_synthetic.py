"""The synthetic benchmark is only useful if its stated truth is the truth: these tests
check the exact CDF, quantiles and copula correlation against data drawn from it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import signal, stats
from scipy.special import ndtri

from normcore.synthetic import (
    SyntheticSpec,
    idp_names,
    simulate,
    true_cdf,
    true_correlation,
    true_quantiles,
)

RICH = SyntheticSpec(n_idps=8, heteroscedasticity=1.0, multimodality=1.0, correlation=0.5)


@pytest.fixture(scope="module")
def rich_data() -> pd.DataFrame:
    return simulate(RICH, 20_000, seed=11)


def _grid(ages, sex: str = "F", site: str = "S0") -> pd.DataFrame:
    ages = np.asarray(ages, dtype=float)
    return pd.DataFrame({"age": ages, "sex": [sex] * ages.size, "site": [site] * ages.size})


def _uniform_p(u: np.ndarray) -> float:
    return stats.kstest(u, "uniform").pvalue


def test_columns_dtypes_and_values():
    spec = SyntheticSpec(n_idps=5, n_sites=4, age_range=(30.0, 60.0))
    df = simulate(spec, 300, seed=0)
    assert list(df.columns) == ["subject_id", "age", "sex", "site", *idp_names(spec)]
    assert len(df) == 300 and df["subject_id"].is_unique
    for col in ("subject_id", "sex", "site"):
        assert pd.api.types.is_string_dtype(df[col])
    assert df["age"].dtype == np.float64 and df["age"].between(30.0, 60.0).all()
    assert set(df["sex"]) == {"F", "M"}
    assert set(df["site"]) == {"S0", "S1", "S2", "S3"}
    values = df[idp_names(spec)]
    assert (values.dtypes == np.float64).all() and np.isfinite(values.to_numpy()).all()


def test_idp_names_are_zero_padded_in_sort_order():
    assert idp_names(SyntheticSpec(n_idps=3)) == ["idp_000", "idp_001", "idp_002"]
    names = idp_names(SyntheticSpec(n_idps=1001))
    assert names[0] == "idp_0000" and names[-1] == "idp_1000" and sorted(names) == names


def test_same_seed_same_table_other_seed_other_people_same_curves():
    spec = SyntheticSpec(n_idps=3)
    pd.testing.assert_frame_equal(simulate(spec, 200, seed=5), simulate(spec, 200, seed=5))
    other = simulate(spec, 200, seed=6)
    assert not np.allclose(other["age"], simulate(spec, 200, seed=5)["age"])
    grid = _grid([25.0, 50.0, 75.0])
    np.testing.assert_array_equal(
        true_quantiles(spec, grid, [0.5]), true_quantiles(SyntheticSpec(n_idps=3), grid, [0.5])
    )
    moved = true_quantiles(SyntheticSpec(n_idps=3, seed=1), grid, [0.5])
    assert not np.allclose(moved, true_quantiles(spec, grid, [0.5]))


def test_idp_j_does_not_depend_on_how_many_idps_there_are():
    grid = _grid([22.0, 47.0, 79.0], sex="M", site="S2")
    few = true_quantiles(SyntheticSpec(n_idps=3), grid, [0.1, 0.9])
    many = true_quantiles(SyntheticSpec(n_idps=10), grid, [0.1, 0.9])
    np.testing.assert_array_equal(few, many[:, :3])


def test_idps_live_on_very_different_scales():
    spec = SyntheticSpec(n_idps=12)
    medians = true_quantiles(spec, _grid([50.0]), [0.5])[0, :, 0]
    assert medians.max() / medians.min() > 1000


@pytest.mark.parametrize(
    "subset",
    [
        pytest.param(lambda df: np.ones(len(df), bool), id="everyone"),
        pytest.param(lambda df: (df["age"] >= 65).to_numpy(), id="age-65-80"),
        pytest.param(lambda df: (df["sex"] == "M").to_numpy(), id="men"),
        pytest.param(lambda df: (df["site"] == "S1").to_numpy(), id="site-S1"),
    ],
)
def test_pit_under_true_cdf_is_uniform(rich_data, subset):
    u = true_cdf(RICH, rich_data)
    assert u.shape == (len(rich_data), RICH.n_idps)
    assert np.all((u > 0) & (u < 1))
    keep = subset(rich_data)
    for j in range(RICH.n_idps):
        assert _uniform_p(u[keep, j]) > 0.001, f"IDP {j} not calibrated"


def test_pit_detects_a_wrong_truth(rich_data):
    """The KS check above has power: a spec without the age-dependent spread and second
    mode, or with other curves, is clearly rejected on the same data."""
    for wrong in (
        SyntheticSpec(n_idps=8, heteroscedasticity=0.0, multimodality=1.0, correlation=0.5),
        SyntheticSpec(n_idps=8, heteroscedasticity=1.0, multimodality=0.0, correlation=0.5),
        SyntheticSpec(n_idps=8, heteroscedasticity=1.0, multimodality=1.0, seed=1),
    ):
        u = true_cdf(wrong, rich_data)
        assert min(_uniform_p(u[:, j]) for j in range(RICH.n_idps)) < 1e-6


def test_true_quantiles_invert_true_cdf_and_never_cross():
    spec = SyntheticSpec(n_idps=5, multimodality=1.5, heteroscedasticity=1.5)
    covariates = simulate(spec, 400, seed=2)[["age", "sex", "site"]]
    q = np.array([1e-9, 0.001, 0.02, 0.25, 0.5, 0.75, 0.98, 0.999])
    values = true_quantiles(spec, covariates, q)
    assert values.shape == (400, 5, q.size)
    assert np.all(np.diff(values, axis=2) > 0)
    for k, level in enumerate(q):
        table = covariates.assign(**dict(zip(idp_names(spec), values[:, :, k].T)))
        back = true_cdf(spec, table)
        np.testing.assert_allclose(back, level, rtol=1e-6, atol=1e-9)


def test_no_multimodality_gives_gaussian_quantiles():
    spec = SyntheticSpec(n_idps=4, multimodality=0.0)
    q = stats.norm.cdf([-1.0, -0.6745, 0.0, 0.6745, 1.0])
    v = true_quantiles(spec, _grid([30.0, 70.0]), q)
    np.testing.assert_allclose(v[..., 2] - v[..., 1], v[..., 3] - v[..., 2], rtol=1e-9)
    iqr_over_2sd = (v[..., 3] - v[..., 1]) / (v[..., 4] - v[..., 0])
    np.testing.assert_allclose(iqr_over_2sd, 0.6745, rtol=1e-9)


@pytest.mark.parametrize("hetero", [0.0, 1.0])
def test_heteroscedasticity_controls_the_spread_over_age(hetero):
    spec = SyntheticSpec(n_idps=4, heteroscedasticity=hetero, multimodality=0.0)
    v = true_quantiles(spec, _grid([27.5, 72.5]), [0.25, 0.75])  # the bands' middles
    ratio = (v[1, :, 1] - v[1, :, 0]) / (v[0, :, 1] - v[0, :, 0])
    df = simulate(spec, 20_000, seed=3)
    residual = df[idp_names(spec)].to_numpy() - true_quantiles(spec, df, [0.5])[..., 0]
    young, old = (df["age"] < 35).to_numpy(), (df["age"] > 65).to_numpy()
    sd_ratio = residual[old].std(axis=0) / residual[young].std(axis=0)
    if hetero == 0.0:
        np.testing.assert_allclose(ratio, 1.0, rtol=1e-9)
        np.testing.assert_allclose(sd_ratio, 1.0, atol=0.08)
    else:
        assert np.all(np.abs(np.log(ratio)) > np.log(1.3))
        np.testing.assert_allclose(np.log(sd_ratio), np.log(ratio), atol=0.08)


def _count_modes(spec: SyntheticSpec) -> list[int]:
    """Peaks of a smoothed histogram of location/scale-normalised residuals, age 65-80."""
    df = simulate(spec, 20_000, seed=4)
    df = df[df["age"] >= 65].reset_index(drop=True)
    q = true_quantiles(spec, df, [0.25, 0.5, 0.75])
    r = (df[idp_names(spec)].to_numpy() - q[..., 1]) / (q[..., 2] - q[..., 0])
    grid = np.linspace(-5.0, 5.0, 400)
    counts = []
    for j in range(spec.n_idps):
        density = stats.gaussian_kde(r[:, j], bw_method=0.15)(grid)
        peaks, _ = signal.find_peaks(density, prominence=0.03 * density.max())
        counts.append(len(peaks))
    return counts


def test_multimodality_makes_a_second_mode():
    assert _count_modes(SyntheticSpec(n_idps=4, multimodality=1.5)) == [2, 2, 2, 2]
    assert _count_modes(SyntheticSpec(n_idps=4, multimodality=0.0)) == [1, 1, 1, 1]


def test_copula_correlation_matches_normal_scores(rich_data):
    scores = ndtri(true_cdf(RICH, rich_data))
    r = true_correlation(RICH)
    np.testing.assert_allclose(np.corrcoef(scores, rowvar=False), r, atol=0.03)
    # Spearman is invariant to each IDP's monotone marginal map, so at one covariate
    # pattern it sees the copula: rho_S = 6/pi * arcsin(R/2).
    young = rich_data[(rich_data["age"] < 30) & (rich_data["sex"] == "F")]
    young = young[young["site"] == "S0"]
    rho = stats.spearmanr(young[idp_names(RICH)].to_numpy()).statistic
    # residual age variation inside the band only blurs this; the bound stays loose
    np.testing.assert_allclose(rho, 6 / math.pi * np.arcsin(r / 2), atol=0.15)


def test_true_correlation_is_a_valid_correlation_matrix():
    for c in (0.0, 0.3, 0.9):
        r = true_correlation(SyntheticSpec(n_idps=20, correlation=c))
        assert r.shape == (20, 20)
        np.testing.assert_array_equal(r, r.T)
        np.testing.assert_array_equal(np.diag(r), 1.0)
        assert np.linalg.eigvalsh(r).min() > 0
        off = r[~np.eye(20, dtype=bool)]
        assert off.max() <= c + 1e-12
        if c == 0.0:
            assert np.all(off == 0)
        else:
            assert off.max() > 0.5 * c  # the same-region IDPs are strongly coupled


@pytest.mark.parametrize("d", [2, 200])
def test_small_and_large_dimensions(d):
    spec = SyntheticSpec(n_idps=d)
    df = simulate(spec, 500, seed=0)
    assert df.shape == (500, 4 + d)
    u = true_cdf(spec, df)
    assert u.shape == (500, d) and np.all((u > 0) & (u < 1))
    assert true_quantiles(spec, df.head(3), [0.1, 0.5, 0.9]).shape == (3, d, 3)
    assert true_correlation(spec).shape == (d, d)


def test_site_and_sex_shift_the_curves_only_when_asked():
    grid = pd.concat(
        [_grid([50.0], site="S0"), _grid([50.0], site="S2"), _grid([50.0], sex="M")],
        ignore_index=True,
    )
    flat = true_quantiles(SyntheticSpec(site_effect=0.0), grid, [0.5])
    np.testing.assert_array_equal(flat[0], flat[1])
    shifted = true_quantiles(SyntheticSpec(site_effect=0.3), grid, [0.5])
    assert not np.allclose(shifted[0], shifted[1])
    assert not np.allclose(shifted[0], shifted[2])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_idps": 0}, "n_idps"),
        ({"n_idps": 2.5}, "n_idps"),
        ({"correlation": 1.0}, "correlation"),
        ({"correlation": -0.1}, "correlation"),
        ({"heteroscedasticity": -1.0}, "heteroscedasticity"),
        ({"multimodality": float("nan")}, "multimodality"),
        ({"n_sites": 0}, "n_sites"),
        ({"site_effect": -0.5}, "site_effect"),
        ({"age_range": (80.0, 20.0)}, "age_range"),
        ({"age_range": (20.0,)}, "age_range"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_spec_is_refused_with_the_field_named(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SyntheticSpec(**kwargs)


def test_invalid_calls_are_refused_clearly():
    spec = SyntheticSpec(n_idps=2)
    with pytest.raises(ValueError, match="n must be"):
        simulate(spec, 0, seed=0)
    df = simulate(spec, 20, seed=0)
    with pytest.raises(ValueError, match="site"):
        true_cdf(spec, df.assign(site="S9"))
    with pytest.raises(ValueError, match="sex"):
        true_cdf(spec, df.assign(sex="X"))
    with pytest.raises(ValueError, match="idp_001"):
        true_cdf(spec, df.drop(columns="idp_001"))
    with pytest.raises(ValueError, match="age"):
        true_quantiles(spec, df.drop(columns="age"), [0.5])
    for bad in ([0.0], [1.0], [0.5, 1.2], []):
        with pytest.raises(ValueError, match="quantiles"):
            true_quantiles(spec, df, bad)
