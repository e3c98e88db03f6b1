import numpy as np
import pytest
from scipy import stats

from normcore import first_stage


def test_t_match_recovers_a_scaled_t_and_calls_normal_tails_normal():
    for dof, scale in ((4.0, 1.3), (10.0, 0.9)):
        median, q95 = scale * stats.t.ppf(0.75, dof), scale * stats.t.ppf(0.975, dof)
        got_scale, got_dof = first_stage.t_match(median, q95)
        assert got_dof == pytest.approx(dof, rel=1e-4)
        assert got_scale == pytest.approx(scale, rel=1e-4)
    scale, dof = first_stage.t_match(1.1 * stats.norm.ppf(0.75), 1.1 * stats.norm.ppf(0.975))
    assert dof is None and scale == pytest.approx(1.1)


def _table(n: int, n_sites: int, site_sd: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    age_z = rng.uniform(-1.5, 1.5, n)
    site = rng.integers(1, n_sites + 1, n)
    effect = rng.normal(0.0, site_sd, (n_sites + 1, 3))
    values = 0.5 * age_z[:, None] + effect[site] + rng.standard_normal((n, 3))
    return values, age_z, site[:, None], [n_sites + 1]


def test_new_person_spread_is_close_to_the_fit_when_people_are_many():
    values, age_z, codes, levels = _table(3000, 3, 0.3)
    spread = first_stage.new_person_spread(values, age_z, codes, levels, seed=0)
    assert spread.scale == pytest.approx(1.0, abs=0.03)
    assert spread.dof is None or spread.dof > 20
    assert spread.site_factor(codes).max() < 1.01


def _sites_of_two_sizes(n: int, seed: int, effect: np.ndarray | None = None):
    """Two sites of ~40 % of the people each and 15 of ~1.3 % each (8 people in 600),
    with a mean and a spread of their own; `effect` reuses the sites of another draw."""
    rng = np.random.default_rng(seed)
    share = np.r_[0.4, 0.4, np.full(15, 0.2 / 15)]
    site = rng.choice(len(share), size=n, p=share) + 1
    if effect is None:
        effect = np.column_stack(
            [rng.normal(0.0, 0.7, (len(share) + 1, 3)), rng.normal(0.0, 0.3, len(share) + 1)]
        )
    age_z = rng.uniform(-1.5, 1.5, n)
    noise = rng.standard_normal((n, 3)) * np.exp(effect[site, 3])[:, None]
    values = 0.5 * age_z[:, None] + effect[site, :3] + noise
    return values, age_z, site[:, None], [len(share) + 1], effect


def test_new_people_of_small_sites_get_their_wider_spread():
    """A site's mean and spread learned from 4 people are known poorly: its new people's
    scores are spread wider than a big site's. The site term says so, and new people of
    the same sites fall outside the 95 % band as often at the small sites as at the big
    ones once scored through `NewPeopleStage`, within a few points; with the pooled spread
    alone (no site term) the small sites' new people fall outside more often still."""
    values, age_z, codes, levels, effect = _sites_of_two_sizes(600, 0)
    spread = first_stage.new_person_spread(values, age_z, codes, levels, seed=0)
    assert spread.site_term > 1.0
    small = codes[:, 0] > 2
    assert spread.site_factor(codes[small]).min() > 1.05 > spread.site_factor(codes[~small]).max()
    stage = first_stage.FirstStage().fit(values, age_z, codes, levels)
    new_values, new_age, new_codes, *_ = _sites_of_two_sizes(20_000, 1, effect)
    band = spread.quantiles(np.array([0.975]))[0]
    new_small = new_codes[:, 0] > 2

    def outside(s: first_stage.NewPersonSpread) -> tuple[float, float]:
        z = first_stage.NewPeopleStage(stage, s).transform(new_values, new_age, new_codes)
        far = np.abs(z) > band
        return far[new_small].mean(), far[~new_small].mean()

    at_small, at_big = outside(spread)
    assert at_small < 0.075 and 0.02 < at_big < 0.08
    pooled_small, _ = outside(spread._replace(site_term=0.0))
    assert pooled_small > at_small + 0.015


def test_new_person_spread_widens_when_new_people_carry_the_error_of_small_sites():
    """60 sites of ~7 people: a held-out person's site mean is known poorly, so scores of
    people the first stage did not see are wider than those of people it did."""
    values, age_z, codes, levels = _table(400, 60, 0.7)
    spread = first_stage.new_person_spread(values, age_z, codes, levels, seed=0)
    scale, dof = spread.scale * spread.site_factor(codes).mean(), spread.dof
    wide = scale * (stats.t.ppf(0.975, dof) if dof else stats.norm.ppf(0.975))
    assert wide > 1.05 * stats.norm.ppf(0.975)


def test_new_person_spread_needs_enough_people():
    spread = first_stage.new_person_spread(*_table(30, 3, 0.3), seed=0)
    assert spread == first_stage.NewPersonSpread(1.0, None)


def test_first_stage_keeps_its_log_scale_through_the_bundle_dict():
    """Positive IDPs are modelled on the log scale; the saved parts say so, and a stage
    read back maps values and scores exactly as the fitted one."""
    values, age_z, codes, levels = _table(300, 2, 0.3)
    values = np.column_stack([np.exp(values[:, 0]), values[:, 1]])
    stage = first_stage.FirstStage().fit(values, age_z, codes, levels)
    assert stage.transform_.log.tolist() == [True, False]
    again = first_stage.FirstStage.from_dict(stage.to_dict())
    scores = stage.transform(values, age_z, codes)
    assert np.array_equal(again.transform(values, age_z, codes), scores)
    back = again.inverse(scores - 8.0, age_z, codes)
    assert (back[:, 0] > 0).all()
    raw = first_stage.FirstStage(log_positive=False).fit(values, age_z, codes, levels)
    assert not raw.transform_.log.any()


def test_out_of_fold_scores_leave_out_people_whose_site_their_fold_never_saw():
    """A site of one person: no fold that holds them out has seen their site, so their
    out-of-fold scores say nothing of the model's error and are left out (nan); everyone
    else has finite scores, divided by the site factor of their fold's counts."""
    values, age_z, codes, levels = _table(300, 3, 0.3)
    codes = codes.copy()
    codes[0, 0] = levels[0]  # a fourth site, of one person
    levels = [levels[0] + 1]
    folds = first_stage.out_of_fold(values, age_z, codes, levels, seed=0)
    assert np.isnan(folds.inverse[0]) and np.isfinite(folds.inverse[1:]).all()
    assert np.all((folds.inverse[1:] > 1 / 300) & (folds.inverse[1:] < 1 / 50))
    spread = first_stage.NewPersonSpread(1.0, None, 4.0, ((100, 100, 100, 1),))
    new = folds.new_people(spread)
    assert np.isnan(new[0]).all()
    factor = np.sqrt(1.0 + 4.0 * folds.inverse[1:])
    assert new[1:] == pytest.approx(folds.scores[1:] / factor[:, None])


def test_a_site_per_person_gets_one_spread_for_all():
    """When most people's site has nobody else in their fold, too few are left to compare
    site sizes: no site term, and the spread is measured over everyone as without one."""
    values, age_z, codes, levels = _table(60, 60, 0.3)
    spread = first_stage.new_person_spread(values, age_z, codes, levels, seed=0)
    assert spread.site_term == 0.0 and spread.level_counts == ()
    folds = first_stage.out_of_fold(values, age_z, codes, levels, seed=0)
    assert np.isnan(folds.inverse).sum() > 10
