"""The synthetic benchmark is only useful if its stated truth is the truth: these tests
check the exact marginal and conditional CDFs, quantiles, joint density and dependence
against data drawn from it, for the copula option and the subgroup option."""

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
    latent_correlation,
    simulate,
    simulate_atypical,
    subgroup_posterior,
    subgroup_prevalence,
    true_cdf,
    true_conditional_cdf,
    true_conditional_quantiles,
    true_correlation,
    true_log_density,
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


# --- The "subgroup" option: dependence a Gaussian copula cannot represent -----------------

SUB = SyntheticSpec(n_idps=8, dependence="subgroup")
SUB_NAMES = idp_names(SUB)


@pytest.fixture(scope="module")
def sub_data() -> pd.DataFrame:
    return simulate(SUB, 20_000, seed=11)


def test_copula_option_reproduces_the_recorded_outputs():
    """Values recorded from the copula-only module before the subgroup option existed: the
    default law, the benchmarks' truth, must not move."""
    spec = SyntheticSpec(n_idps=20)
    df = simulate(spec, 40, seed=7)
    pd.testing.assert_frame_equal(
        df, simulate(SyntheticSpec(n_idps=20, dependence="copula"), 40, 7)
    )
    cells = [(0, 0), (5, 3), (17, 11), (39, 19), (22, 8)]
    values = df[idp_names(spec)].to_numpy()
    recorded = [1286.1248956733646, 60503.954416221226, 198506.80701884997, 3900.978458038408,
                202563.37731123535]  # fmt: skip
    np.testing.assert_allclose([values[c] for c in cells], recorded, rtol=1e-12)
    assert df["age"].iloc[3] == pytest.approx(29.59731569354301, rel=1e-14)
    u = true_cdf(spec, df)
    recorded = [0.5509363809701389, 0.0016377938810075588, 0.23348091257503487,
                0.18013611753119813, 0.44456368022669934]  # fmt: skip
    np.testing.assert_allclose([u[c] for c in cells], recorded, rtol=1e-10)
    q = true_quantiles(spec, df.head(3), [0.05, 0.9])
    np.testing.assert_allclose([q[2, 13, 0], q[1, 6, 1]], [4478.256891555287, 238010.8185276122],
                               rtol=1e-12)  # fmt: skip


@pytest.mark.parametrize(
    "given",
    [
        pytest.param([], id="none-marginals"),
        pytest.param(["idp_000"], id="one"),
        pytest.param(["idp_002", "idp_005"], id="two"),
        pytest.param(SUB_NAMES[:5], id="five"),
        pytest.param(SUB_NAMES[1:], id="all-but-one"),
    ],
)
@pytest.mark.parametrize(
    "band",
    [
        pytest.param((20.0, 80.0), id="all-ages"),
        pytest.param((20.0, 35.0), id="young"),
        pytest.param((65.0, 80.0), id="old"),
    ],
)
def test_conditional_pit_is_uniform_at_exact_draws(sub_data, given, band):
    """If the conditional CDF is the truth, evaluated at the simulated people it is
    uniform for every IDP not given, at all ages and within an age band (where both the
    subgroup share and the coupling differ): a strict Monte-Carlo check of the formula."""
    u = true_conditional_cdf(SUB, sub_data, given)
    keep = sub_data["age"].between(*band).to_numpy()
    free = [j for j, name in enumerate(SUB_NAMES) if name not in given]
    assert np.isnan(u[:, [j for j in range(SUB.n_idps) if j not in free]]).all()
    assert np.all((u[:, free] > 0) & (u[:, free] < 1))
    for j in free:
        assert _uniform_p(u[keep, j]) > 0.001, f"IDP {j} given {given} not calibrated"


def test_conditional_pit_is_uniform_with_a_given_set_per_row(sub_data):
    """People with blank cells: each row conditions on its own known IDPs."""
    known = np.random.default_rng(0).random((len(sub_data), SUB.n_idps)) < 0.6
    blanked = sub_data.copy()
    blanked[SUB_NAMES] = np.where(known, sub_data[SUB_NAMES], np.nan)
    u = true_conditional_cdf(SUB, sub_data, known)
    assert np.isnan(u[known]).all() and np.isfinite(u[~known]).all()
    for j in range(SUB.n_idps):
        assert _uniform_p(u[~known[:, j], j]) > 0.001
    # quantiles read only the known cells, so blanks are fine there
    q = true_conditional_quantiles(SUB, blanked.head(50), known[:50], [0.5])
    np.testing.assert_array_equal(np.isnan(q[..., 0]), known[:50])


def test_conditional_pit_is_uniform_for_the_copula_option(rich_data):
    u = true_conditional_cdf(RICH, rich_data, ["idp_001", "idp_004", "idp_007"])
    for j in (0, 2, 3, 5, 6):
        assert _uniform_p(u[:, j]) > 0.001


def test_conditional_pit_detects_a_wrong_joint(sub_data):
    """The PIT check has power: the same margins' curves with no subgroup, a subgroup share
    constant in age, coupling constant in age, or a Gaussian copula are rejected."""
    given = SUB_NAMES[:3]
    old = sub_data["age"].between(65.0, 80.0).to_numpy()
    for wrong, rows in (
        (SyntheticSpec(n_idps=8, dependence="subgroup", subgroup_shift=0.0), slice(None)),
        (SyntheticSpec(n_idps=8, dependence="subgroup", prevalence=(0.25, 0.25)), old),
        (SyntheticSpec(n_idps=8, dependence="subgroup", coupling=(0.45, 0.45)), old),
        (SyntheticSpec(n_idps=8, multimodality=1.0, correlation=0.5), slice(None)),
    ):
        u = true_conditional_cdf(wrong, sub_data, given)[rows]
        assert min(_uniform_p(u[:, j]) for j in range(3, 8)) < 1e-6, wrong


def test_empty_given_set_gives_the_marginals():
    for spec in (SUB, RICH):
        df = simulate(spec, 300, seed=3)
        np.testing.assert_allclose(true_conditional_cdf(spec, df, []), true_cdf(spec, df),
                                   rtol=0, atol=1e-12)  # fmt: skip
        np.testing.assert_allclose(
            true_conditional_quantiles(spec, df, [], [0.02, 0.5, 0.98]),
            true_quantiles(spec, df, [0.02, 0.5, 0.98]),
            rtol=1e-9,
        )


@pytest.mark.parametrize("spec", [SUB, RICH], ids=["subgroup", "copula"])
def test_conditional_quantiles_invert_the_conditional_cdf(spec):
    df = simulate(spec, 200, seed=5)
    given = idp_names(spec)[2:5]
    levels = np.array([1e-6, 0.02, 0.25, 0.5, 0.75, 0.98, 0.999])
    q = true_conditional_quantiles(spec, df[["age", "sex", "site", *given]], given, levels)
    assert q.shape == (200, spec.n_idps, levels.size)
    free = [j for j, name in enumerate(idp_names(spec)) if name not in given]
    assert np.all(np.diff(q[:, free], axis=2) > 0)
    for k, level in enumerate(levels):
        table = df.copy()
        table[[idp_names(spec)[j] for j in free]] = q[:, free, k]
        back = true_conditional_cdf(spec, table, given)[:, free]
        np.testing.assert_allclose(back, level, rtol=1e-6, atol=1e-9)


def test_log_density_is_a_density_consistent_with_the_conditional_cdf():
    """exp(log density) of one IDP integrates to 1 and is the derivative of its CDF; and
    log p(y_G, y_u) - log p(y_G) is the log derivative of P(Y_u <= y_u | y_G) (chain rule),
    which ties the joint density to the conditional CDFs checked by Monte Carlo above."""
    for spec in (SUB, RICH):
        names = idp_names(spec)
        person = simulate(spec, 5, seed=8)
        row = person.iloc[[2]]
        quant = true_quantiles(spec, row, [1e-7, 1 - 1e-7])[0, 4]
        grid = np.linspace(quant[0], quant[1], 4001)
        line = pd.concat([row] * grid.size, ignore_index=True).assign(**{names[4]: grid})
        density = np.exp(true_log_density(spec, line, [names[4]]))
        assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-5)
        given, u = names[:3], names[5]
        step = 1e-5 * float(person[u].abs().max())
        up = person.assign(**{u: person[u] + step})
        down = person.assign(**{u: person[u] - step})
        slope = (
            true_conditional_cdf(spec, up, given)[:, 5]
            - true_conditional_cdf(spec, down, given)[:, 5]
        ) / (2 * step)
        chain = true_log_density(spec, person, [*given, u]) - true_log_density(spec, person, given)
        np.testing.assert_allclose(chain, np.log(slope), atol=1e-5)
        # the default is every IDP
        np.testing.assert_array_equal(
            true_log_density(spec, person), true_log_density(spec, person, names)
        )


def test_coupling_grows_with_age():
    """Without the subgroup, normal scores are Gaussian with R(t): their correlation within
    an age band matches latent_correlation there and is far stronger when old."""
    spec = SyntheticSpec(n_idps=8, dependence="subgroup", subgroup_shift=0.0)
    df = simulate(spec, 20_000, seed=12)
    scores = ndtri(true_cdf(spec, df))
    off = ~np.eye(8, dtype=bool)
    means = []
    for band in ((20.0, 32.0), (68.0, 80.0)):
        keep = df["age"].between(*band).to_numpy()
        seen = np.corrcoef(scores[keep], rowvar=False)
        truth = latent_correlation(spec, df["age"][keep]).mean(axis=0)
        np.testing.assert_allclose(seen[off], truth[off], atol=0.05)
        means.append(seen[off].mean())
    assert means[1] > 2.5 * means[0]
    r = latent_correlation(spec, [20.0, 80.0])
    np.testing.assert_allclose(r[:, np.arange(8), np.arange(8)], 1.0)
    assert np.all(r[1][off] > r[0][off]) and np.all(np.linalg.eigvalsh(r) > 0)


def test_subgroup_share_grows_with_age_and_is_recovered_from_the_idps(sub_data):
    """E[P(member | IDPs)] = pi(t): the posterior's mean per age band, computed from the
    IDPs only, must match the stated prevalence, which rises from 5 % to 50 %."""
    post = subgroup_posterior(SUB, sub_data)
    assert np.all((post >= 0) & (post <= 1))
    np.testing.assert_allclose(subgroup_prevalence(SUB, [20.0, 80.0]), [0.05, 0.5])
    shares = []
    for band in ((20.0, 32.0), (44.0, 56.0), (68.0, 80.0)):
        keep = sub_data["age"].between(*band).to_numpy()
        truth = subgroup_prevalence(SUB, sub_data["age"][keep]).mean()
        assert abs(post[keep].mean() - truth) < 4 * post[keep].std() / math.sqrt(keep.sum())
        shares.append(truth)
    assert shares[0] < 0.1 < shares[1] < 0.4 < shares[2]


def test_subgroup_moves_many_idps_together(sub_data):
    """Members (posterior > 0.9) sit below non-members (posterior < 0.1) on most IDPs at
    once; a copula's per-IDP second modes would not line up person by person."""
    post = subgroup_posterior(SUB, sub_data)
    scores = ndtri(true_cdf(SUB, sub_data))
    gap = scores[post > 0.9].mean(axis=0) - scores[post < 0.1].mean(axis=0)
    assert np.sum(np.abs(gap) > 0.8) >= 6


@pytest.mark.parametrize("kind", ["flipped_coupling", "scattered_subgroup"])
def test_atypical_people_share_every_margin_but_not_the_joint(sub_data, kind):
    atypical = simulate_atypical(SUB, 20_000, seed=11, kind=kind)
    assert list(atypical.columns) == list(sub_data.columns)
    assert atypical["subject_id"].str.startswith("aty-").all()
    margins = true_cdf(SUB, atypical)
    for j in range(SUB.n_idps):  # per-IDP z-scores cannot see them
        assert _uniform_p(margins[:, j]) > 0.001, f"IDP {j} margin moved"
    given = SUB_NAMES[:3]
    u = true_conditional_cdf(SUB, atypical, given)
    assert min(_uniform_p(u[:, j]) for j in range(3, 8)) < 1e-10
    controls = true_log_density(SUB, sub_data)
    detected = np.mean(true_log_density(SUB, atypical) < np.quantile(controls, 0.05))
    assert detected > 0.2


def test_atypical_copula_people_share_margins_too(rich_data):
    atypical = simulate_atypical(RICH, 20_000, seed=11)
    margins = true_cdf(RICH, atypical)
    for j in range(RICH.n_idps):
        assert _uniform_p(margins[:, j]) > 0.001
    controls = true_log_density(RICH, rich_data)
    assert np.mean(true_log_density(RICH, atypical) < np.quantile(controls, 0.05)) > 0.2


@pytest.mark.parametrize("d", [2, 100])
def test_subgroup_small_and_large_dimensions(d):
    spec = SyntheticSpec(n_idps=d, dependence="subgroup")
    df = simulate(spec, 300, seed=0)
    names = idp_names(spec)
    assert df.shape == (300, 4 + d) and np.isfinite(df[names].to_numpy()).all()
    u = true_conditional_cdf(spec, df, names[: d // 2])
    assert u.shape == (300, d) and np.all((u[:, d // 2 :] > 0) & (u[:, d // 2 :] < 1))
    assert np.isfinite(true_log_density(spec, df)).all()
    assert true_quantiles(spec, df.head(3), [0.1, 0.9]).shape == (3, d, 2)


def test_subgroup_seed_and_curves_are_reproducible():
    pd.testing.assert_frame_equal(simulate(SUB, 100, seed=4), simulate(SUB, 100, seed=4))
    grid = _grid([30.0, 60.0])
    # the location curves are the copula option's; the subgroup's parameters are its own
    copula = SyntheticSpec(n_idps=8)
    assert not np.allclose(true_quantiles(SUB, grid, [0.5]), true_quantiles(copula, grid, [0.5]))
    np.testing.assert_array_equal(
        true_quantiles(SUB, grid, [0.3]),
        true_quantiles(SyntheticSpec(n_idps=12, dependence="subgroup"), grid, [0.3])[:, :8],
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dependence": "vine"}, "dependence"),
        ({"coupling": (0.2, 1.0)}, "coupling"),
        ({"coupling": 0.5}, "coupling"),
        ({"prevalence": (0.0, 0.5)}, "prevalence"),
        ({"prevalence": (0.1, 1.0)}, "prevalence"),
        ({"subgroup_shift": -1.0}, "subgroup_shift"),
    ],
)
def test_invalid_subgroup_spec_is_refused_with_the_field_named(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SyntheticSpec(**{"dependence": "subgroup", **kwargs})


def test_invalid_joint_calls_are_refused_clearly():
    df = simulate(SUB, 20, seed=0)
    with pytest.raises(ValueError, match="idp_999"):
        true_conditional_cdf(SUB, df, ["idp_000", "idp_999"])
    with pytest.raises(ValueError, match="string"):
        true_conditional_cdf(SUB, df, "idp_000")
    with pytest.raises(ValueError, match="no IDP is left"):
        true_conditional_quantiles(SUB, df, SUB_NAMES, [0.5])
    with pytest.raises(ValueError, match="shape"):
        true_conditional_cdf(SUB, df, np.ones((20, 3), bool))
    with pytest.raises(ValueError, match="idp_001"):
        true_conditional_quantiles(SUB, df.drop(columns="idp_001"), ["idp_001"], [0.5])
    with pytest.raises(ValueError, match=r"'idp_002'.* row 4"):
        true_log_density(SUB, df.assign(idp_002=df["idp_002"].where(df.index != 4)))
    with pytest.raises(ValueError, match="quantiles"):
        true_conditional_quantiles(SUB, df, [], [1.0])
    with pytest.raises(ValueError, match="kind"):
        simulate_atypical(SUB, 10, seed=0, kind="shuffled")
    with pytest.raises(ValueError, match="subgroup"):
        simulate_atypical(RICH, 10, seed=0, kind="scattered_subgroup")
    with pytest.raises(ValueError, match="n_idps"):
        simulate_atypical(SyntheticSpec(n_idps=1), 10, seed=0)
    with pytest.raises(ValueError, match="latent_correlation"):
        true_correlation(SUB)
    with pytest.raises(ValueError, match="no subgroup"):
        subgroup_posterior(RICH, simulate(RICH, 5, seed=0))
    with pytest.raises(ValueError, match="age"):
        subgroup_prevalence(SUB, [30.0, float("nan")])
