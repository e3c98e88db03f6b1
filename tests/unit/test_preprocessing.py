import numpy as np
import pandas as pd
import pytest
from scipy import stats

from normcore.preprocessing import (
    AgeShape,
    CovariateEncoder,
    IDPTransform,
    LocationScale,
    spline_basis,
)
from normcore.schema import Schema


def test_idp_transform_standardises_and_round_trips():
    rng = np.random.default_rng(0)
    values = np.column_stack([rng.lognormal(8, 0.6, 2000), rng.normal(2.5, 0.1, 2000)])
    t = IDPTransform.fit(values)
    z = t.transform(values)
    assert np.allclose(t.inverse(z), values, rtol=1e-12)
    assert np.allclose(z.mean(0), 0, atol=1e-9) and np.allclose(z.std(0), 1, atol=1e-9)


def test_idp_transform_json_round_trip():
    t = IDPTransform.fit(np.random.default_rng(2).normal(size=(100, 2)))
    t2 = IDPTransform.from_dict(t.to_dict())
    x = np.array([[0.3, -1.2]])
    assert np.allclose(t.transform(x), t2.transform(x))


def test_covariate_encoder_maps_unseen_levels_to_unknown_and_flags_them():
    schema = Schema(age="age", categorical=("sex", "site"), idps=("a",))
    train = pd.DataFrame(
        {"age": [20.0, 30, 40], "sex": [0, 1, 1], "site": ["A", "B", "B"], "a": [1.0, 2, 3]}
    )
    enc = CovariateEncoder.fit(train, schema)
    assert enc.n_levels == [3, 3]
    codes, unseen = enc.encode_categories(pd.DataFrame({"sex": ["1", "0"], "site": ["B", "Z"]}))
    assert codes.tolist() == [[2, 2], [1, 0]]
    assert unseen.tolist() == [[False, False], [False, True]]
    assert CovariateEncoder.from_dict(enc.to_dict()) == enc
    assert enc.encode_age(np.array([30.0]))[0] == pytest.approx(0.0)


def test_location_scale_smoothness_is_chosen_from_the_data():
    """GCV keeps a straight line straight and follows a wiggle: it neither fits noise
    nor flattens signal, with one setting for both IDPs."""
    rng = np.random.default_rng(4)
    age = rng.uniform(-2, 2, 3000)
    codes = np.ones((3000, 1), dtype=int)
    noise = rng.standard_normal((3000, 2))
    y = np.column_stack([0.5 * age, np.sin(3 * age)]) + noise
    ls = LocationScale.fit(y, age, codes, [2])
    grid = np.linspace(-1.9, 1.9, 39)
    curve = ls.inverse(np.zeros((len(grid), 2)), grid, np.ones((len(grid), 1), dtype=int))
    line = np.polyval(np.polyfit(grid, curve[:, 0], 1), grid)
    assert np.abs(curve[:, 0] - line).max() < 0.05
    wiggle = curve[:, 1] - curve[:, 1].mean()
    assert np.abs(wiggle - (np.sin(3 * grid) - np.sin(3 * grid).mean())).max() < 0.2


def test_location_scale_removes_a_nonlinear_heteroscedastic_age_effect_and_inverts():

    rng = np.random.default_rng(3)
    age = rng.uniform(-2, 2, 4000)
    codes = rng.integers(1, 3, (4000, 1))
    sd = np.exp(0.4 * age)
    y = (np.sin(2 * age) + 0.8 * (codes[:, 0] == 2) + sd * rng.standard_normal(4000))[:, None]
    ls = LocationScale.fit(y, age, codes, [3])
    z = ls.transform(y, age, codes)
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    young, old = age < -1, age > 1
    assert abs(z[young].std() - z[old].std()) < 0.1
    assert np.allclose(ls.inverse(z, age, codes), y)
    again = LocationScale.from_dict(ls.to_dict())
    assert np.allclose(again.transform(y, age, codes), z)
    unknown = ls.transform(y[:5], age[:5], np.zeros((5, 1), dtype=int))
    assert np.isfinite(unknown).all()


def _site_data(rng, n, site, shift=0.0, sd=1.0):
    age = rng.uniform(-1.5, 1.5, n)
    codes = np.c_[rng.integers(1, 3, n), np.full(n, site) if site else rng.integers(1, 4, n)]
    y = np.c_[np.sin(age) + 0.3 * (codes[:, 1] == 2) + shift, 0.5 * age]
    y = y + rng.normal(size=(n, 2)) * np.exp(0.2 * age)[:, None] * np.array([1.0, sd])
    return y, age, codes


def test_location_scale_learns_a_new_sites_shift_and_spread_without_touching_the_others():
    rng = np.random.default_rng(0)
    y, age, codes = _site_data(rng, 2000, site=None)
    ls = LocationScale.fit(y, age, codes, [3, 4])
    new_y, new_age, new_codes = _site_data(rng, 400, site=4, shift=1.0, sd=2.0)
    adapted = ls.with_level(1, 4, new_y, new_age, new_codes, prior_n=5)
    z = adapted.transform(new_y, new_age, new_codes)
    assert np.abs(z.mean(axis=0)).max() < 0.1
    assert z.std(axis=0) == pytest.approx([1.0, 1.0], abs=0.1)
    assert np.array_equal(adapted.transform(y, age, codes), ls.transform(y, age, codes))
    assert LocationScale.from_dict(adapted.to_dict()).n_levels == [2, 4]


def test_location_scale_shrinks_a_site_learned_from_few_controls():
    rng = np.random.default_rng(1)
    y, age, codes = _site_data(rng, 2000, site=None)
    ls = LocationScale.fit(y, age, codes, [3, 4])
    few = _site_data(rng, 5, site=4, shift=1.0)
    shift = ls.with_level(1, 4, *few, prior_n=5).transform(*few).mean(axis=0)
    unshrunk = ls.with_level(1, 4, *few, prior_n=0).transform(*few).mean(axis=0)
    before = ls.transform(*few).mean(axis=0)
    assert np.abs(unshrunk).max() < 0.1
    # 5 controls and a prior of 5: the site moves half-way, so half the offset is left
    assert shift[0] == pytest.approx(before[0] / 2, abs=0.15)
    with pytest.raises(ValueError, match="neither known nor the next"):
        ls.with_level(1, 6, *few, prior_n=5)


def _shape_changing_with_age(rng, n):
    """Residuals normal at young ages, increasingly right-skewed and bimodal at old ones."""
    age = rng.uniform(-1.7, 1.7, n)
    second = rng.random(n) < 0.35 * (age > 0)
    skewed = rng.exponential(1.0, n) - 1.0
    x = np.where(age < 0, rng.standard_normal(n), skewed + 2.5 * second)
    return np.stack([x, rng.standard_normal(n)], axis=1), age


def test_age_shape_makes_margins_normal_at_every_age_and_inverts():
    rng = np.random.default_rng(0)
    resid, age = _shape_changing_with_age(rng, 8000)
    shape = AgeShape.fit(resid, age)
    new, new_age = _shape_changing_with_age(rng, 8000)
    z = shape.transform(new, new_age)
    for band in ((-1.7, -0.3), (0.3, 1.0), (1.0, 1.7)):
        rows = (new_age > band[0]) & (new_age < band[1])
        assert stats.kstest(z[rows, 0], "norm").statistic < 0.05, band
        # without the map, the old ages' residuals are far from normal
    old = new_age > 1.0
    standardised = (new[old, 0] - new[old, 0].mean()) / new[old, 0].std()
    assert stats.kstest(standardised, "norm").statistic > 0.1
    assert np.allclose(shape.inverse(z, new_age), new, atol=1e-9)


def test_age_shape_is_monotone_and_finite_far_in_the_tails():
    rng = np.random.default_rng(1)
    resid, age = _shape_changing_with_age(rng, 3000)
    shape = AgeShape.fit(resid, age)
    grid = np.linspace(-40, 40, 801)
    for a in (-2.5, 0.0, 1.2, 3.0):  # inside and outside the training ages
        z = shape.transform(np.stack([grid, grid], axis=1), np.full(len(grid), a))
        assert np.all(np.isfinite(z)) and np.all(np.diff(z, axis=0) > 0)
        back = shape.inverse(z, np.full(len(grid), a))
        assert np.allclose(back[:, 0], grid, atol=1e-6)


def test_age_shape_json_round_trip():
    rng = np.random.default_rng(2)
    resid, age = _shape_changing_with_age(rng, 1000)
    shape = AgeShape.fit(resid, age)
    again = AgeShape.from_dict(shape.to_dict())
    assert np.allclose(again.transform(resid, age), shape.transform(resid, age))


def test_idp_transform_puts_positive_idps_on_the_log_scale_and_its_inverse_stays_positive():
    rng = np.random.default_rng(5)
    values = np.column_stack([rng.lognormal(8, 0.8, 500), rng.normal(0.0, 1.0, 500)])
    t = IDPTransform.fit(values)
    assert t.log.tolist() == [True, False]  # a column with values <= 0 stays in raw units
    assert np.allclose(t.inverse(t.transform(values)), values, rtol=1e-12)
    far_below = t.inverse(np.full((3, 2), -50.0))
    assert (far_below[:, 0] > 0).all() and (far_below[:, 1] < 0).all()
    assert t.centre[0] == pytest.approx(np.exp(np.log(values[:, 0]).mean()))
    assert t.centre[1] == pytest.approx(values[:, 1].mean())
    assert IDPTransform.fit(values, log=np.array([False, False])).log.tolist() == [False, False]
    with pytest.raises(ValueError, match=r"\[1\]"):
        IDPTransform.fit(values, log=np.array([True, True]))


def test_idp_transform_maps_a_non_positive_value_of_a_log_idp_below_everything_not_to_nan():
    t = IDPTransform.fit(np.random.default_rng(6).lognormal(8, 0.5, (200, 1)))
    z = t.transform(np.array([[0.0], [-3.0], [10.0]]))
    assert z[0, 0] == -np.inf and z[1, 0] == -np.inf and np.isfinite(z[2, 0])


def test_idp_transform_reads_a_file_without_the_log_flag_as_raw_units():
    t = IDPTransform.from_dict({"loc": [3.0, 5.0], "scale": [1.0, 2.0]})
    assert t.log.tolist() == [False, False]
    assert np.allclose(t.inverse(np.array([[1.0, 1.0]])), [[4.0, 7.0]])
    again = IDPTransform.from_dict(t.to_dict())
    assert np.array_equal(again.log, t.log) and np.array_equal(again.loc, t.loc)


def _thin_old_tail(seed: int, n_idps: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Constant-spread IDPs with a linear decline; 320 people at ages -1.5..0 (standardised)
    and 20 thinly spread over 0..3, as a clinic's reference table thins out with age."""
    rng = np.random.default_rng(seed)
    age = np.concatenate([rng.uniform(-1.5, 0.0, 320), 3.0 * rng.beta(1.0, 2.0, 20)])
    y = -0.3 * age[:, None] + rng.standard_normal((len(age), n_idps))
    return y, age, np.ones((len(age), 1), dtype=int)


def test_location_scale_spread_does_not_collapse_where_few_people_carry_it():
    """The spread is constant; near the oldest ages a handful of people carry the fit, and
    their sample spread must not pull the curve down (or up) to theirs."""
    for seed in range(3):
        y, age, codes = _thin_old_tail(seed)
        ls = LocationScale.fit(y, age, codes, [2])
        grid = np.linspace(age.min(), age.max(), 41)
        ones = np.ones((len(grid), 1), dtype=int)
        spread = ls.inverse(np.ones((len(grid), y.shape[1])), grid, ones) - ls.inverse(
            np.zeros((len(grid), y.shape[1])), grid, ones
        )
        ratio = spread / np.median(spread, axis=0)
        assert ratio.min() > 0.6 and ratio.max() < 1.6, (seed, ratio.min(), ratio.max())


def test_location_scale_keeps_a_spread_that_really_changes_with_age():
    """Shrinkage takes out noise, not signal: a spread that triples over the ages, carried
    by many people, is kept."""
    rng = np.random.default_rng(8)
    age = rng.uniform(-1.7, 1.7, 1500)
    y = (np.exp(0.33 * age) * rng.standard_normal(1500))[:, None]
    ls = LocationScale.fit(y, age, np.ones((1500, 1), dtype=int), [2])
    ends = np.array([-1.5, 1.5])
    ones = np.ones((2, 1), dtype=int)
    spread = ls.inverse(np.ones((2, 1)), ends, ones) - ls.inverse(np.zeros((2, 1)), ends, ones)
    assert spread[1, 0] / spread[0, 0] == pytest.approx(np.exp(0.99), rel=0.2)


def test_location_scale_holds_mean_and_spread_beyond_the_training_ages():
    y, age, codes = _thin_old_tail(1)
    ls = LocationScale.fit(y, age, codes, [2])
    lo, hi = age.min(), age.max()
    outside = np.array([lo - 2.0, lo - 0.1, hi + 0.1, hi + 2.0])
    edge = np.array([lo, lo, hi, hi])
    ones = np.ones((4, 1), dtype=int)
    z = np.full((4, y.shape[1]), 1.5)
    assert np.allclose(ls.inverse(z, outside, ones), ls.inverse(z, edge, ones))
    assert np.allclose(ls.transform(z, outside, ones), ls.transform(z, edge, ones))


@pytest.mark.parametrize("n_knots", [2, 3, 17])
@pytest.mark.parametrize("spacing", ["even", "uneven"])
def test_spline_basis_is_scikit_learns(n_knots, spacing):
    """The age basis scoring uses without importing scikit-learn or scipy.interpolate is
    its SplineTransformer's (cubic, linear past the end knots) to rounding: inside, at the
    knots, just outside and far outside."""
    from sklearn.preprocessing import SplineTransformer

    rng = np.random.default_rng(n_knots)
    knots = np.linspace(-1.7, 2.3, n_knots)
    if spacing == "uneven" and n_knots > 2:
        knots[1:-1] = np.sort(rng.uniform(-1.7, 2.3, n_knots - 2))
    x = np.concatenate([rng.normal(scale=3.0, size=2000), knots, [-40.0, 40.0, -1.7 - 1e-12]])
    expected = (
        SplineTransformer(knots=knots.reshape(-1, 1), degree=3, extrapolation="linear")
        .fit(knots.reshape(-1, 1))
        .transform(x.reshape(-1, 1))
    )
    got = spline_basis(knots, x)
    assert got.shape == expected.shape == (len(x), n_knots + 2)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
