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
    scale, dof = first_stage.new_person_spread(*_table(3000, 3, 0.3), seed=0)
    assert scale == pytest.approx(1.0, abs=0.03)
    assert dof is None or dof > 20


def test_new_person_spread_widens_when_new_people_carry_the_error_of_small_sites():
    """60 sites of ~7 people: a held-out person's site mean is known poorly, so scores of
    people the first stage did not see are wider than those of people it did."""
    values, age_z, codes, levels = _table(400, 60, 0.7)
    scale, dof = first_stage.new_person_spread(values, age_z, codes, levels, seed=0)
    wide = scale * (stats.t.ppf(0.975, dof) if dof else stats.norm.ppf(0.975))
    assert wide > 1.05 * stats.norm.ppf(0.975)


def test_new_person_spread_needs_enough_people():
    assert first_stage.new_person_spread(*_table(30, 3, 0.3), seed=0) == (1.0, None)


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
