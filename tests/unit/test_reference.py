import dataclasses

import numpy as np
import pytest
from scipy import optimize, stats

from normcore.reference import (
    PROBABILITY_LEVELS,
    Z_BOUND,
    DeviationCalibration,
    ReferenceTable,
    build_reference,
    corrected_calibration,
    deviation_calibration,
    deviation_over_present,
    deviation_site_shifts,
    mahalanobis_centile,
    mixture_quantiles,
    scores_at,
    shrink_towards,
    with_level,
    z_of_scores,
)

NORMAL = stats.norm.ppf(PROBABILITY_LEVELS)
"""Prior of the tests' tables: what a standard normal sampler would give."""


def _gaussian_q(mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Exact quantile vectors (n, Q, D) of N(mu, sd^2) at the table's levels."""
    z = stats.norm.ppf(PROBABILITY_LEVELS)
    return mu[:, None, :] + sd[:, None, :] * z[None, :, None]


def test_z_of_scores_recover_z_inside_and_beyond_the_table():
    mu, sd = np.array([[10.0, -2.0]]), np.array([[2.0, 0.5]])
    q = np.repeat(_gaussian_q(mu, sd), 7, axis=0)
    z_true = np.array([-5.0, -3.5, -1.0, 0.0, 0.77, 2.9, 4.0])
    y = mu + sd * z_true[:, None]
    z = z_of_scores(q, y)
    assert np.allclose(z, z_true[:, None], atol=1e-6)


def test_z_of_scores_are_bounded():
    q = _gaussian_q(np.zeros((1, 1)), np.ones((1, 1)))
    assert z_of_scores(q, np.array([[1e9]]))[0, 0] == Z_BOUND
    assert z_of_scores(q, np.array([[-1e9]]))[0, 0] == -Z_BOUND


def test_values_at_inverts_z_of_scores():
    q = _gaussian_q(np.array([[5.0]]), np.array([[3.0]]))
    probs = np.array([0.0005, 0.02, 0.25, 0.5, 0.98, 0.9995])
    v = scores_at(q, probs)[0, :, 0]
    assert np.allclose(v, stats.norm.ppf(probs, 5, 3), atol=1e-6)


def _exact_sampler(rng):
    """Truth: y ~ N(0.5 * age + 3 * code, 1 + age/50), independent per IDP.

    The steep age slope makes naive pooling of neighbouring ages visibly widen the bands.
    """

    def sample(ages, codes, seed=0):  # draws come from `rng`; the seed is not needed
        mean = 0.5 * ages + 3.0 * codes[:, 0]
        sd = 1 + ages / 50
        return (mean + sd * rng.standard_normal((2, len(ages)))).T

    return sample


def test_built_table_matches_the_truth_and_never_crosses():
    table = build_reference(
        _exact_sampler(np.random.default_rng(0)),
        (20, 80),
        [3],
        NORMAL,
        samples_per_combination=20_000,
        grid_points=21,
    )
    assert table.quantiles.shape == (3, 21, len(PROBABILITY_LEVELS), 2)
    assert np.all(np.diff(table.quantiles, axis=2) >= 0)
    ages = np.array([23.3, 50.0, 77.7])
    codes = np.array([[2], [1], [0]])
    q, n_eff = table.lookup(codes, ages)
    v = scores_at(q, np.array([0.05, 0.5, 0.95]))
    sd = 1 + ages / 50
    truth = (
        stats.norm.ppf([0.05, 0.5, 0.95])[None, :] * sd[:, None]
        + (0.5 * ages + 3 * codes[:, 0])[:, None]
    )
    assert np.allclose(v[:, :, 0], truth, atol=0.1 * sd[:, None])
    assert np.all(n_eff > 1000)


def _sample_quantiles(rng, mean, sd, ages=11, n=2000, idps=3):
    """Quantile vectors (ages, Q, idps) of n draws of N(mean, sd^2) at each age."""
    draws = mean + sd * rng.standard_normal((ages, n, idps))
    quantiles = np.quantile(draws, PROBABILITY_LEVELS, axis=1).transpose(1, 0, 2)
    return quantiles, np.full(ages, float(n))


def test_shrinkage_removes_sampling_noise_around_the_prior():
    """Draws that are exactly the prior's distribution: what the table holds beyond the
    prior is noise, and most of it goes (the error falls by far more than half)."""
    q, n_eff = _sample_quantiles(np.random.default_rng(4), 0.0, 1.0)
    shrunk = shrink_towards(q, n_eff, NORMAL)
    raw_error = np.abs(q - NORMAL[None, :, None]).mean()
    assert np.abs(shrunk - NORMAL[None, :, None]).mean() < 0.3 * raw_error
    assert np.all(np.diff(shrunk, axis=1) >= 0)


def test_shrinkage_keeps_a_real_departure_from_the_prior():
    """Draws from N(0.5, 1.2^2): the departure is far above the noise and stays."""
    q, n_eff = _sample_quantiles(np.random.default_rng(5), 0.5, 1.2)
    truth = 0.5 + 1.2 * NORMAL[None, :, None]
    shrunk = shrink_towards(q, n_eff, NORMAL)
    assert np.abs(shrunk - truth).mean() < 1.1 * np.abs(q - truth).mean()
    median = len(PROBABILITY_LEVELS) // 2
    assert shrunk[:, median].mean() == pytest.approx(0.5, abs=0.03)


def test_mahalanobis_centile_is_uniform_for_draws_from_the_model():
    rng = np.random.default_rng(1)
    table = build_reference(
        _exact_sampler(rng), (20, 80), [1], NORMAL, samples_per_combination=20_000, grid_points=11
    )
    ages = rng.uniform(20, 80, 3000)
    codes = np.zeros((3000, 1), dtype=np.int64)
    y = _exact_sampler(rng)(ages, codes)
    q, _ = table.lookup(codes, ages)
    _, centile = mahalanobis_centile(table, codes, ages, z_of_scores(q, y))
    assert stats.kstest(centile / 100, "uniform").pvalue > 0.01


def _people_spread_unlike_the_model(rng, n, factor_of):
    """The exact sampler's table over ages 20-80 and n people of it, aged uniformly:
    (table, codes, ages, z, same), z the normal scores of people whose spread about the
    mean is the model's times `factor_of(ages)` ((n, 1)), `same` those of the people as
    drawn."""
    table = build_reference(
        _exact_sampler(rng), (20, 80), [1], NORMAL, samples_per_combination=20_000, grid_points=11
    )
    codes = np.zeros((n, 1), dtype=np.int64)
    ages = rng.uniform(20, 80, n)
    q, _ = table.lookup(codes, ages)
    y = _exact_sampler(rng)(ages, codes)
    mean = (0.5 * ages)[:, None]
    z = z_of_scores(q, mean + factor_of(ages) * (y - mean))
    return table, codes, ages, z, z_of_scores(q, y)


def test_deviation_calibration_makes_people_unlike_the_model_uniform():
    """People whose spread differs from the model's by a person-specific factor (log-normal,
    10 % wider on average, as when per-IDP errors vary with age): raw ranks flag too many
    at the top; the calibration measured on one half of them makes the other half uniform."""
    rng = np.random.default_rng(2)
    n = 6000
    table, codes, ages, z, same = _people_spread_unlike_the_model(
        rng, n, lambda ages: np.exp(rng.normal(0.1, 0.25, size=(n, 1)))
    )
    # noise only
    none = deviation_calibration(table, codes[:3000], ages[:3000], same[:3000])
    assert (none.shift, none.spread, none.shift_slope, none.log_spread_slope) == (0, 1, 0, 0)
    calibration = deviation_calibration(table, codes[:3000], ages[:3000], z[:3000])
    _, raw = mahalanobis_centile(table, codes[3000:], ages[3000:], z[3000:])
    _, fixed = mahalanobis_centile(table, codes[3000:], ages[3000:], z[3000:], calibration)
    assert (raw > 95).mean() > 0.1 and stats.kstest(raw / 100, "uniform").statistic > 0.08
    assert stats.kstest(fixed / 100, "uniform").statistic < 0.04


def test_deviation_calibration_follows_a_miscalibration_that_changes_with_age():
    """People whose spread against the model's grows with age (narrower than the model
    at 20, wider at 80, as where coupling grows with age and the draws miss it): one
    shift and spread for everyone leaves the young under-flagged and the old
    over-flagged; the age trend measured on half of them makes every age band of the
    other half uniform, and no trend is measured where there is none."""
    n = 8000
    table, codes, ages, z, same = _people_spread_unlike_the_model(
        np.random.default_rng(4), n, lambda ages: np.exp(-0.2 + 0.4 * (ages - 20) / 60)[:, None]
    )
    half = slice(0, n // 2)
    calibration = deviation_calibration(table, codes[half], ages[half], z[half])
    assert calibration.shift_slope > 0 or calibration.log_spread_slope > 0
    assert calibration.ages == (pytest.approx(20, abs=0.1), pytest.approx(80, abs=0.1))
    flat = DeviationCalibration(calibration.shift, calibration.spread)
    rest = slice(n // 2, n)
    _, trended = mahalanobis_centile(table, codes[rest], ages[rest], z[rest], calibration)
    _, pooled = mahalanobis_centile(table, codes[rest], ages[rest], z[rest], flat)
    for lo in (20, 35, 50, 65):
        band = (ages[rest] >= lo) & (ages[rest] < lo + 15)
        assert stats.kstest(trended[band] / 100, "uniform").statistic < 0.06, lo
    old = ages[rest] >= 65
    assert stats.kstest(pooled[old] / 100, "uniform").statistic > 0.1  # the age trend matters
    flat_people = deviation_calibration(table, codes[half], ages[half], same[half])
    assert (flat_people.shift_slope, flat_people.log_spread_slope) == (0.0, 0.0)


def test_validation_people_move_the_start_by_as_much_as_their_noise_allows():
    """The model measures the deviation's correction on its many out-of-fold people (the
    start) and on its few validation people, and moves the start towards the latter by
    max(0, 1 - (2 se)^2 / d^2) of their difference d: a difference within two of the
    validation people's standard errors does not move it, one of four moves it three
    quarters of the way, one far beyond it almost all the way; the site shifts and age
    range stay the start's."""
    rng = np.random.default_rng(5)
    n = 3080
    table, codes, ages, z, _ = _people_spread_unlike_the_model(
        rng, n, lambda ages: np.exp(rng.normal(0.1, 0.25, size=(n, 1)))
    )
    many, few = slice(0, 3000), slice(3000, n)
    start = deviation_calibration(table, codes[many], ages[many], z[many], beyond_noise=0.0)
    assert start.shift != 0 and start.spread != 1  # measured, not tested against none
    measured = deviation_calibration(
        table, codes[few], ages[few], z[few], start, start.ages, beyond_noise=0.0
    )
    assert measured.ages == start.ages
    se = measured.spread / np.sqrt(80)
    near = dataclasses.replace(measured, shift=start.shift + 0.5 * se)
    within = dataclasses.replace(measured, shift=start.shift - 1.9 * se)
    four = dataclasses.replace(measured, shift=start.shift + 4 * se)
    far = dataclasses.replace(measured, shift=start.shift + 10 * se)
    for noise in (near, within):
        assert corrected_calibration(start, noise, ages[few]).shift == start.shift
    moved = corrected_calibration(start, four, ages[few]).shift - start.shift
    assert moved == pytest.approx(4 * se * 3 / 4)
    moved = corrected_calibration(start, far, ages[few]).shift - start.shift
    assert moved == pytest.approx(10 * se * 0.96)
    same = dataclasses.replace(measured, shift=start.shift)
    kept = corrected_calibration(start, same, ages[few])
    assert kept.shift == start.shift and kept.ages == start.ages
    spread_far = dataclasses.replace(measured, spread=start.spread * 2)
    d, se_log = np.log(2.0), 1.0 / np.sqrt(2.0 * 79)
    assert corrected_calibration(start, spread_far, ages[few]).spread == pytest.approx(
        start.spread * np.exp(d * (1 - (2 * se_log / d) ** 2))
    )


def test_a_profile_with_blank_cells_is_ranked_as_the_model_draws_are():
    """The deviation over present IDPs ranks a sub-profile among the model's draws, not on
    the chi-square law, which holds only for a Gaussian copula: where the draws have
    heavier joint tails (a multivariate t, normal margins after the table's ranks),
    people of the model's own law with one or two blank cells come out uniform, while
    their chi-square centiles flag too many."""
    rng = np.random.default_rng(6)
    d, nu = 20, 6
    root = np.linalg.cholesky(0.7 * np.eye(d) + 0.3)

    def heavy_tails(ages, codes, seed=0):
        g = rng.standard_normal((len(ages), d)) @ root.T
        return g * np.sqrt(nu / rng.chisquare(nu, len(ages)))[:, None]

    table = build_reference(
        heavy_tails, (20, 80), [1], NORMAL, samples_per_combination=20_000, grid_points=5
    )
    n = 4000
    codes, ages = np.zeros((n, 1), dtype=np.int64), rng.uniform(20, 80, n)
    q, _ = table.lookup(codes, ages)
    z = z_of_scores(q, heavy_tails(ages, codes))
    present = np.ones((n, d), dtype=bool)
    present[:, 0] = False
    present[n // 2 :, 3] = False
    d2, centile = deviation_over_present(table, codes, ages, z, present)
    assert stats.kstest(centile / 100, "uniform").statistic < 0.04
    assert abs(np.mean(centile > 95) - 0.05) < 0.015
    chi2 = stats.chi2.cdf(d2, present.sum(axis=1))
    assert stats.kstest(chi2, "uniform").statistic > 0.1  # what the chi-square law gives


def test_deviation_calibration_is_stored_as_older_files_hold_it_when_flat():
    """Two numbers when nothing changes with age (every file before the age trend holds
    that form, and reads and saves unchanged); six with the trend; both read back."""
    flat = DeviationCalibration(0.1, 1.2, ages=(20.0, 80.0))
    assert flat.to_list() == [0.1, 1.2]
    assert DeviationCalibration.from_list([0.1, 1.2]) == DeviationCalibration(0.1, 1.2)
    trended = DeviationCalibration(0.1, 1.2, 0.01, -0.02, (20.0, 80.0))
    assert DeviationCalibration.from_list(trended.to_list()) == trended
    # held flat beyond the validation ages: 10 and 20 get the same correction
    young, edge, middle = trended.apply(
        np.ones(3), np.array([10.0, 20.0, 50.0]), np.zeros((3, 1), dtype=np.int64)
    )
    assert young == edge != middle


def test_table_arrays_round_trip_exactly():
    """A built table is already at the stored precision, so storing it loses nothing."""
    table = build_reference(_exact_sampler(np.random.default_rng(2)), (0, 10), [2], NORMAL, 2000, 5)
    again = ReferenceTable.from_arrays(table.to_arrays(), [2], table.bandwidth)
    for name in ("ages", "quantiles", "n_eff", "precision", "mahalanobis"):
        assert np.array_equal(getattr(again, name), getattr(table, name)), name
    with pytest.raises(KeyError):
        ReferenceTable.from_arrays({}, [2], 1.0)


def _known_and_tabled_table() -> ReferenceTable:
    """Four combinations, the middle two with the first stage's margins."""
    known = np.array([False, True, True, False])
    return build_reference(
        _exact_sampler(np.random.default_rng(4)),
        (20, 80),
        [4],
        NORMAL,
        2000,
        7,
        first_stage_margins=known,
    )


def test_stored_table_holds_the_first_stage_margins_once():
    table = _known_and_tabled_table()
    arrays = table.to_arrays()
    assert arrays["reference.from_prior"].tolist() == [False, True, True, False]
    assert arrays["reference.quantiles"].shape == (2, 7, len(NORMAL), 2)
    assert arrays["reference.n_eff"].shape == (2, 7)
    assert np.array_equal(arrays["reference.prior"], NORMAL.astype(np.float32))
    again = ReferenceTable.from_arrays(arrays, [4], table.bandwidth)
    assert np.array_equal(again.quantiles, table.quantiles)
    assert np.array_equal(again.n_eff, table.n_eff)


def test_tables_stored_in_full_per_combination_still_load():
    """Model files written before the prior was stored once hold every combination."""
    table = _known_and_tabled_table()
    full = {
        "reference.ages": table.ages,
        "reference.quantiles": table.quantiles.astype(np.float32),
        "reference.n_eff": table.n_eff.astype(np.float32),
        "reference.precision": table.precision.astype(np.float32),
        "reference.mahalanobis": table.mahalanobis.astype(np.float32),
    }
    again = ReferenceTable.from_arrays(full, [4], table.bandwidth)
    assert np.array_equal(again.quantiles, table.quantiles)
    assert np.array_equal(again.n_eff, table.n_eff)


def test_a_mask_that_disagrees_with_the_stored_quantiles_is_refused():
    arrays = _known_and_tabled_table().to_arrays()
    arrays["reference.from_prior"] = np.array([False, True, False, False])
    with pytest.raises(ValueError, match="tabled"):
        ReferenceTable.from_arrays(arrays, [4], 1.0)


def test_with_level_appends_a_new_level_and_keeps_the_others():
    rng = np.random.default_rng(3)
    table = build_reference(
        _exact_sampler(rng), (20, 80), [2], NORMAL, samples_per_combination=5000, grid_points=11
    )
    extended = with_level(
        table, _exact_sampler(rng), column=0, code=2, prior=NORMAL, samples_per_combination=5000
    )
    assert extended.n_levels == [3] and extended.quantiles.shape[0] == 3
    assert np.allclose(extended.quantiles[:2], table.quantiles)
    q, _ = extended.lookup(np.array([[2]]), np.array([50.0]))
    assert scores_at(q, np.array([0.5]))[0, 0, 0] == pytest.approx(0.5 * 50 + 6, abs=0.15)
    again = with_level(
        extended, _exact_sampler(rng), column=0, code=1, prior=NORMAL, samples_per_combination=5000
    )
    assert again.n_levels == [3] and np.allclose(
        again.quantiles[[0, 2]], extended.quantiles[[0, 2]]
    )


def test_first_stage_margins_are_the_prior_and_the_deviation_sees_only_dependence():
    """A combination marked as known gets `prior` as its margins at every age, with no
    Monte-Carlo error; its deviation reference comes from the draws' ranks, so draws
    whose margins differ from the prior (here: 1.5x wider) still rank uniformly."""
    rng = np.random.default_rng(6)
    corr = np.array([[1.0, 0.6], [0.6, 1.0]])

    def wide(ages, codes, seed):
        return 1.5 * rng.multivariate_normal(np.zeros(2), corr, size=len(ages))

    table = build_reference(
        wide, (20, 80), [2], NORMAL, 5000, 11, first_stage_margins=np.array([False, True])
    )
    assert np.allclose(table.quantiles[1], NORMAL[None, :, None], atol=1e-6)
    assert not np.allclose(table.quantiles[0], table.quantiles[1], atol=0.2)
    codes = np.ones((3000, 1), dtype=np.int64)
    ages = rng.uniform(20, 80, 3000)
    q, n_eff = table.lookup(codes, ages)
    assert np.all(np.isinf(n_eff))
    people = rng.multivariate_normal(np.zeros(2), corr, size=3000)  # standard normal margins
    _, centile = mahalanobis_centile(table, codes, ages, z_of_scores(q, people))
    assert stats.kstest(centile / 100, "uniform").statistic < 0.04


def test_draw_offsets_remove_the_draws_mean_where_the_first_stage_gives_the_margins():
    """A denoiser whose draws at a known combination are off by a mean that changes with
    age: the table learns that offset (so `draw_offset` moves draws back onto the
    margins the centiles use) and ranks the deviation without it; a combination whose
    draws have no offset gets none (its noise shrunk away), and a tabled one none."""
    rng = np.random.default_rng(8)

    def shifted(ages, codes, seed):
        t = (ages - 50.0) / 30.0
        mean = np.where(codes[:, :1] == 1, 0.3 + 0.2 * t[:, None] - 0.1 * t[:, None] ** 2, 0.0)
        return mean + rng.standard_normal((len(ages), 2))

    table = build_reference(
        shifted, (20, 80), [3], NORMAL, 3000, 11, seed=1,
        first_stage_margins=np.array([True, True, False]),
    )  # fmt: skip
    ages = np.linspace(20.0, 95.0, 31)
    t = np.clip((ages - 50.0) / 30.0, -1, 1)
    truth = 0.3 + 0.2 * t - 0.1 * t**2
    found = table.draw_offset(np.ones((31, 1), dtype=np.int64), ages)
    error = np.abs(found - truth[:, None])  # Monte-Carlo: 2,000 draws, SE ~0.07 at the ends
    assert error.mean() < 0.05 and error.max() < 0.2, found
    none = np.abs(table.draw_offset(np.zeros((31, 1), dtype=np.int64), ages))
    assert none.mean() < 0.03 and none.max() < 0.1
    assert np.all(table.draw_offsets[2] == 0)
    again = ReferenceTable.from_arrays(table.to_arrays(), [3], table.bandwidth)
    assert np.allclose(again.draw_offsets, table.draw_offsets, atol=1e-6)
    # the deviation ranks draws without their offset: people on the margins are uniform
    codes = np.ones((3000, 1), dtype=np.int64)
    ages = rng.uniform(20, 80, 3000)
    q, _ = table.lookup(codes, ages)
    people = rng.standard_normal((3000, 2))
    _, centile = mahalanobis_centile(table, codes, ages, z_of_scores(q, people))
    assert stats.kstest(centile / 100, "uniform").statistic < 0.04
    # a new level is tabled from its draws: no offset for it, the others' kept
    extended = with_level(table, shifted, column=0, code=3, prior=NORMAL,
                          samples_per_combination=3000)  # fmt: skip
    assert np.array_equal(extended.draw_offsets[:3], table.draw_offsets.astype(np.float32))
    assert np.all(extended.draw_offsets[3] == 0)


def test_tables_stored_without_draw_offsets_leave_draws_as_they_are():
    arrays = _known_and_tabled_table().to_arrays()
    del arrays["reference.draw_offsets"]
    again = ReferenceTable.from_arrays(arrays, [4], 1.0)
    assert np.all(again.draw_offset(np.array([[1], [2]]), np.array([30.0, 60.0])) == 0)


def test_every_combination_is_drawn_with_its_own_seed():
    """One noise sequence shared by all combinations would make the deviation
    reference's Monte-Carlo error the same for everyone (see `Sampler`)."""
    seeds = []
    rng = np.random.default_rng(7)

    def recording(ages, codes, seed):
        seeds.append(seed)
        return rng.standard_normal((len(ages), 2))

    table = build_reference(
        recording, (20, 80), [3], NORMAL, 1000, 5, first_stage_margins=np.array([False, True, True])
    )
    with_level(table, recording, column=0, code=3, prior=NORMAL, samples_per_combination=1000)
    assert len(seeds) == 4 and len(set(seeds)) == 4


def _two_gaussians(mu: list[float], sd: list[float], n: int = 1, d: int = 1) -> np.ndarray:
    """Quantile vectors (n, S, Q, d) of S normal laws, exact at the table's levels."""
    q = np.array(mu)[:, None] + np.array(sd)[:, None] * NORMAL[None, :]
    return np.broadcast_to(q[None, :, :, None], (n, len(mu), len(NORMAL), d)).copy()


def _table_cdf(q: np.ndarray, weights: np.ndarray, x: float) -> float:
    """The mixture's CDF at x, each law read from its quantile vector q (S, Q) one point
    at a time, as `z_of_scores` reads any table."""
    return sum(
        w * stats.norm.cdf(z_of_scores(q[s][None, :, None], np.array([[x]]))[0, 0])
        for s, w in enumerate(weights)
    )


def test_mixture_quantiles_invert_the_mixture_cdf():
    q = _two_gaussians([-1.0, 1.5], [0.7, 1.3])
    weights = np.array([0.3, 0.7])
    mixed = mixture_quantiles(q, weights)[0, :, 0]
    brute = [
        optimize.brentq(lambda x, p=p: _table_cdf(q[0, :, :, 0], weights, x) - p, -30, 30,
                        xtol=1e-14)
        for p in PROBABILITY_LEVELS
    ]  # fmt: skip
    assert np.allclose(mixed, brute, rtol=0, atol=1e-10)
    # The laws are normal and tabled exactly, so this is also the true mixture's quantiles.
    truth = [
        optimize.brentq(
            lambda x, p=p: 0.3 * stats.norm.cdf(x, -1.0, 0.7)
            + 0.7 * stats.norm.cdf(x, 1.5, 1.3) - p, -30, 30, xtol=1e-14,
        )
        for p in PROBABILITY_LEVELS
    ]  # fmt: skip
    assert np.allclose(mixed, truth, rtol=0, atol=1e-6)


def test_mixture_quantiles_match_quantiles_of_mixed_draws():
    """Draws of a skewed law and a normal one, mixed in proportion: their empirical
    quantiles agree with the mixture of the two tables within Monte-Carlo error."""
    rng = np.random.default_rng(8)
    a = rng.gamma(2.0, 1.0, 200_000)
    b = rng.normal(4.0, 0.5, 200_000)
    q = np.stack([np.quantile(a, PROBABILITY_LEVELS), np.quantile(b, PROBABILITY_LEVELS)])
    mixed = mixture_quantiles(q[None, :, :, None], np.array([0.25, 0.75]))[0, :, 0]
    draws = np.concatenate([a[:50_000], b[:150_000]])
    empirical = np.quantile(draws, PROBABILITY_LEVELS)
    assert np.all(np.diff(mixed) > 0)
    assert np.abs(mixed - empirical).max() < 0.05
    assert np.abs(mixed - empirical)[3:-3].max() < 0.02


def test_a_mixture_of_one_law_or_of_equal_laws_is_that_law():
    q = _two_gaussians([0.5, 0.5], [2.0, 2.0], n=3, d=2)
    assert np.allclose(mixture_quantiles(q, np.array([0.4, 0.6])), q[:, 0], rtol=0, atol=1e-9)
    assert np.array_equal(mixture_quantiles(q[:, :1], np.array([1.0])), q[:, 0])


SEX_MEAN, SEX_SD, SITE_MEAN = 2.0, 0.5, 1.0
"""The tests' first stage: sex code s and site code j have mean 2 s + j and spread
1 + 0.5 s; an unknown sex (code 0) has mean j and spread 1, as a first stage gives an
unknown level no effect of its own."""


def _stage_mean_sd(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return SEX_MEAN * codes[:, 0] + SITE_MEAN * codes[:, 1], 1 + SEX_SD * codes[:, 0]


def _rescore(scores, codes_from, codes_to, ages):
    """Normal scores at codes_from -> raw values -> normal scores at codes_to."""
    m_from, s_from = _stage_mean_sd(codes_from)
    m_to, s_to = _stage_mean_sd(codes_to)
    raw = m_from[:, None, None] + s_from[:, None, None] * scores
    return (raw - m_to[:, None, None]) / s_to[:, None, None]


def _seeded_sampler(ages, codes, seed):
    """Standard normal scores with a correlation, from the seed alone (so two tables built
    with the same seed see the same draws)."""
    draws = np.random.default_rng(seed).multivariate_normal(
        [0.0, 0.0], [[1.0, 0.5], [0.5, 1.0]], size=len(ages)
    )
    return draws + 0.3 * codes[:, :1]  # some departure where levels are unknown


SEX_SITE_PEOPLE = np.array([[1, 1]] * 30 + [[2, 1]] * 10 + [[1, 2]] * 5 + [[2, 2]] * 45)
"""Training codes: site 1 is 3/4 sex 1, site 2 is 1/10 sex 1."""


def _sex_site_table(mixing: bool = True) -> ReferenceTable:
    """Sex (closed) x site (open), codes 0..2 each; known combinations from the prior."""
    known = np.array([s > 0 and j > 0 for s in range(3) for j in range(3)])
    return build_reference(
        _seeded_sampler, (20, 80), [3, 3], NORMAL, 2000, 7, seed=3,
        first_stage_margins=known,
        people=SEX_SITE_PEOPLE if mixing else None,
        closed_columns=np.array([True, False]) if mixing else None,
        rescore=_rescore if mixing else None,
    )  # fmt: skip


def test_unknown_sex_at_a_known_site_is_the_mixture_of_the_sites_sexes():
    table = _sex_site_table()
    mixed = table.mixed_combinations().reshape(3, 3)
    assert mixed.tolist() == [[False, True, True], [False] * 3, [False] * 3]
    parts, weights = table.mixture_components(1)  # sex unknown, site 1
    assert parts.tolist() == [4, 7] and np.allclose(weights, [0.75, 0.25])
    arrays = table.to_arrays()
    assert arrays["reference.quantiles"].shape[0] == 3  # unknown site: (0, 0), (1, 0), (2, 0)
    for site, share in ((1, 0.75), (2, 0.1)):
        n = 20_000
        rng = np.random.default_rng(site)
        sex = np.where(rng.random(n) < share, 1, 2)
        raw = SEX_MEAN * sex + SITE_MEAN * site + (1 + SEX_SD * sex) * rng.standard_normal(n)
        codes = np.column_stack([np.zeros(n, np.int64), np.full(n, site)])
        ages = rng.uniform(20, 80, n)
        q, n_eff = table.lookup(codes, ages, rescore=_rescore)
        mean, sd = _stage_mean_sd(codes)
        z = z_of_scores(q, np.repeat(((raw - mean) / sd)[:, None], 2, axis=1))
        assert stats.kstest(z[:, 0], "norm").pvalue > 0.01
        assert np.all(np.isinf(n_eff))
        # At each tabled quantile the true mixture's CDF is the table's probability level.
        x = q[0, :, 0] * sd[0] + mean[0]
        truth = share * stats.norm.cdf(x, SEX_MEAN + SITE_MEAN * site, 1 + SEX_SD) + (
            1 - share
        ) * stats.norm.cdf(x, 2 * SEX_MEAN + SITE_MEAN * site, 1 + 2 * SEX_SD)
        assert np.allclose(truth, PROBABILITY_LEVELS, rtol=0, atol=1e-8)


def test_mixing_leaves_known_and_unknown_site_combinations_as_they_were():
    mixing, tabled = _sex_site_table(), _sex_site_table(mixing=False)
    rng = np.random.default_rng(9)
    codes = np.array([[s, j] for s in range(3) for j in range(3) if s > 0 or j == 0] * 20)
    ages = rng.uniform(15, 85, len(codes))
    a, a_n = mixing.lookup(codes, ages, rescore=_rescore)
    b, b_n = tabled.lookup(codes, ages)
    assert np.array_equal(a, b) and np.array_equal(a_n, b_n)
    assert tabled.to_arrays()["reference.quantiles"].shape[0] == 5  # sex or site unknown
    with pytest.raises(ValueError, match="rescore"):
        mixing.lookup(np.array([[0, 1]]), np.array([50.0]))


def test_mixtures_are_not_sampled_and_their_deviation_is_their_components():
    sampled = []

    def sampler(ages, codes, seed):
        sampled.append(tuple(codes[0]))
        return _seeded_sampler(ages, codes, seed)

    known = np.array([s > 0 and j > 0 for s in range(3) for j in range(3)])
    table = build_reference(
        sampler, (20, 80), [3, 3], NORMAL, 2000, 7, seed=3, first_stage_margins=known,
        people=SEX_SITE_PEOPLE, closed_columns=np.array([True, False]), rescore=_rescore,
    )  # fmt: skip
    assert sorted(sampled) == [(0, 0), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert np.all(np.isfinite(table.mahalanobis)) and np.all(np.diff(table.mahalanobis) >= 0)
    z, ages = np.zeros((2, 2)), np.array([40.0, 60.0])
    for site in (1, 2):  # unknown sex: ranked among the mixture's people, as a known sex is
        codes = np.array([[0, site]] * 2)
        assert np.all(np.isfinite(mahalanobis_centile(table, codes, ages, z)[1]))


def test_mixed_tables_round_trip_and_tables_without_people_still_load():
    table = _sex_site_table()
    again = ReferenceTable.from_arrays(table.to_arrays(), [3, 3], table.bandwidth)
    assert np.array_equal(again.level_counts, table.level_counts)
    assert again.closed_columns.tolist() == [True, False]
    mixed = table.mixed_combinations()
    assert np.array_equal(again.quantiles[~mixed], table.quantiles[~mixed])
    assert np.all(np.isnan(again.quantiles[mixed]))
    older = _sex_site_table(mixing=False).to_arrays()
    del older["reference.level_counts"], older["reference.closed_columns"]
    loaded = ReferenceTable.from_arrays(older, [3, 3], table.bandwidth)
    assert not loaded.mixed_combinations().any()
    assert np.all(np.isfinite(loaded.quantiles))


def test_a_site_with_one_sex_mixes_nothing_and_a_new_site_mixes_its_controls():
    people = np.array([[1, 1]] * 4 + [[2, 2]] * 6)
    known = np.array([s > 0 and j > 0 for s in range(3) for j in range(3)])
    table = build_reference(
        _seeded_sampler, (20, 80), [3, 3], NORMAL, 1000, 5, seed=1,
        first_stage_margins=known, people=people, closed_columns=np.array([True, False]),
    )  # fmt: skip
    parts, weights = table.mixture_components(1)
    assert parts.tolist() == [4] and weights.tolist() == [1.0]
    codes, ages = np.array([[0, 1], [1, 1]]), np.array([40.0, 40.0])
    q, _ = table.lookup(codes, ages, rescore=_rescore)
    assert np.allclose(q[0], _rescore(q[1:], codes[1:], codes[:1], ages[:1])[0])
    controls = np.array([[1, 3]] * 2 + [[2, 3]] * 6 + [[0, 3]] * 3)  # 3 of unknown sex
    extended = with_level(
        table, _seeded_sampler, column=1, code=3, prior=NORMAL, samples_per_combination=1000,
        people=controls,
    )  # fmt: skip
    parts, weights = extended.mixture_components(3)  # sex unknown, the new site
    assert parts.tolist() == [7, 11] and np.allclose(weights, [0.25, 0.75])
    assert extended.level_counts.reshape(3, 4)[:, 1:3].tolist() == [[0, 0], [4, 0], [0, 6]]


def test_a_new_site_with_both_sexes_samples_them_but_not_their_mixture():
    sampled = []

    def sampler(ages, codes, seed):
        sampled.append(tuple(codes[0]))
        return _seeded_sampler(ages, codes, seed)

    table = _sex_site_table()
    controls = np.array([[1, 3]] * 2 + [[2, 3]] * 6)
    extended = with_level(
        table, sampler, column=1, code=3, prior=NORMAL, samples_per_combination=1000,
        people=controls, rescore=_rescore,
    )  # fmt: skip
    assert sorted(sampled) == [(1, 3), (2, 3)]
    assert extended.mixed_combinations()[3]  # sex unknown at the new site
    assert np.all(np.isfinite(extended.mahalanobis[3]))


def test_the_deviation_of_an_unknown_sex_ranks_among_people_of_the_mixture():
    """People of unknown sex at site 2, drawn from its mixture (sex 1 or 2 in the site's
    proportions, the model's IDP correlation within each sex) and scored within it: their
    deviation centiles are uniform. The denoiser's own draws for an unknown sex (here
    shifted by 0.3) would give another reference."""
    table = _sex_site_table()
    assert not np.array_equal(table.mahalanobis, _sex_site_table(mixing=False).mahalanobis)
    rng = np.random.default_rng(10)
    n = 4000
    sex = np.where(rng.random(n) < 0.1, 1, 2)
    at = rng.integers(len(table.ages), size=n)  # people at the grid ages, with their coupling
    e = np.empty((n, 2))
    for g, precision in enumerate(table.precision):
        cov = np.linalg.inv(precision)
        corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
        e[at == g] = rng.multivariate_normal([0.0, 0.0], corr, size=int((at == g).sum()))
    raw = (SEX_MEAN * sex + SITE_MEAN * 2)[:, None] + (1 + SEX_SD * sex)[:, None] * e
    codes = np.column_stack([np.zeros(n, np.int64), np.full(n, 2)])
    ages = table.ages[at]
    q, _ = table.lookup(codes, ages, rescore=_rescore)
    mean, sd = _stage_mean_sd(codes)
    z = z_of_scores(q, (raw - mean[:, None]) / sd[:, None])
    _, centile = mahalanobis_centile(table, codes, ages, z)
    assert stats.kstest(centile / 100, "uniform").statistic < 0.04


def test_site_shifts_follow_sites_whose_people_the_model_reads_unlike_others():
    """A big site read as the model draws and two small ones whose people are spread 30 %
    wider and 25 % narrower than the model's: each small site gets a shift of its sign
    (shrunk, it has few people), the big one about none, and fresh people of the small
    sites are then ranked nearer the middle. Where sites do not differ, no shift is
    worth more than noise."""
    rng = np.random.default_rng(6)
    table = build_reference(
        _exact_sampler(rng), (20, 80), [4], NORMAL, samples_per_combination=20_000, grid_points=11
    )

    def people(sizes: dict[int, int], factors: dict[int, float]):
        codes = np.concatenate([np.full(n, site) for site, n in sizes.items()])[:, None]
        ages = rng.uniform(20, 80, len(codes))
        q, _ = table.lookup(codes, ages)
        y = _exact_sampler(rng)(ages, codes)
        mean = (0.5 * ages + 3.0 * codes[:, 0])[:, None]
        factor = np.array([factors[c] for c in codes[:, 0]])[:, None]
        return codes, ages, z_of_scores(q, mean + factor * (y - mean))

    sizes, factors = {1: 2000, 2: 60, 3: 60}, {1: 1.0, 2: 1.3, 3: 0.75}
    sites = deviation_site_shifts(table, *people(sizes, factors), column=0)
    big, wide, narrow = sites.site_shifts
    assert wide > 0.2 and narrow < -0.2 and abs(big) < 0.05
    codes, ages, z = people({2: 500, 3: 500}, factors)
    _, raw = mahalanobis_centile(table, codes, ages, z)
    _, shifted = mahalanobis_centile(table, codes, ages, z, sites)
    for site in (2, 3):
        here = codes[:, 0] == site
        assert abs(np.median(shifted[here]) - 50) < abs(np.median(raw[here]) - 50) - 10
    alike = deviation_site_shifts(table, *people(sizes, {1: 1.0, 2: 1.0, 3: 1.0}), column=0)
    assert np.all(np.abs(alike.site_shifts) < 0.1)
    restored = DeviationCalibration.from_list(sites.to_list(), sites.sites_to_dict())
    assert restored == sites
