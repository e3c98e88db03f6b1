import numpy as np
import pytest

from normcore.adapt import plan_adaptation
from normcore.errors import DataError
from normcore.model import NormativeModel


def _new_site(df, shift_sd=1.5):
    """Controls from a scanner whose values sit `shift_sd` standard deviations higher."""
    out = df.copy()
    out["site"] = "CLINIC"
    for idp in [c for c in df.columns if c.startswith("idp_")]:
        out[idp] = out[idp] + shift_sd * df[idp].std()
    return out


def test_adapting_to_a_new_site_learns_its_offset_and_records_it(fitted, train_df, test_df):
    controls = _new_site(train_df.head(60))
    adapted = fitted.adapt(controls, steps=150)
    assert adapted.levels["site"][-1] == "CLINIC"
    assert fitted.levels["site"] == ["S0", "S1"]
    record = adapted.adaptations[-1]
    assert record["level"] == "CLINIC" and record["n_controls"] == 60 and not record["readapted"]
    people = _new_site(test_df)
    before = fitted.score(people)
    after = adapted.score(people)
    assert (before["unseen_levels"] == "site").all() and (after["unseen_levels"] == "").all()
    assert abs(after["z"].mean()) < abs(before["z"].mean())
    kept = test_df[test_df["site"] == "S0"]
    assert np.allclose(adapted.score(kept)["centile"], fitted.score(kept)["centile"], atol=1e-6)


def test_adapted_model_survives_save_and_load(fitted, train_df, tmp_path):
    adapted = fitted.adapt(_new_site(train_df.head(30)), steps=20)
    adapted.save(tmp_path / "a.normcore")
    again = NormativeModel.load(tmp_path / "a.normcore")
    assert again.adaptations == adapted.adaptations
    people = _new_site(train_df.tail(5))
    assert np.allclose(again.score(people)["centile"], adapted.score(people)["centile"])


def test_readapting_an_existing_site_keeps_the_level_count(fitted, train_df):
    controls = train_df[train_df["site"] == "S1"].head(30)
    adapted = fitted.adapt(controls, steps=20)
    assert adapted.levels["site"] == ["S0", "S1"] and adapted.adaptations[-1]["readapted"]


def test_too_few_controls_is_refused(fitted, train_df):
    with pytest.raises(DataError, match="At least 3 controls"):
        fitted.adapt(_new_site(train_df.head(2)))


def test_controls_from_several_sites_are_refused(fitted, train_df):
    with pytest.raises(DataError, match="one site"):
        fitted.adapt(train_df.head(40))


def test_controls_with_a_column_missing_name_it(fitted, train_df):
    with pytest.raises(DataError, match="idp_002"):
        fitted.adapt(_new_site(train_df.head(30)).drop(columns="idp_002"))


def test_site_argument_overrides_the_column(fitted, train_df):
    adapted = fitted.adapt(train_df.head(20), site="CLINIC2", steps=10)
    assert adapted.adaptations[-1]["level"] == "CLINIC2"


def test_a_site_adapted_from_few_controls_gets_posterior_predictive_spread(fitted, train_df):
    """Draws at a site learned from n controls are widened as a normal-inverse-chi-squared
    predictive with m = n + PRIOR_N: variance m/(m-2) * (1 + 1/m); other sites and
    re-adapted training sites are left exactly as they were."""
    from normcore.adapt import PRIOR_N, adapted_levels
    from normcore.joint import with_site_uncertainty

    adapted = fitted.adapt(_new_site(train_df.head(5)), steps=10)
    readapted = fitted.adapt(train_df[train_df["site"] == "S1"].head(5), steps=10)
    rng = np.random.default_rng(0)
    resid = rng.standard_normal((40_000, 3))
    codes = np.zeros((40_000, 2), dtype=np.int64)
    k = list(adapted.levels).index("site")
    codes[:20_000, k] = 3  # CLINIC, the level added by adaptation
    codes[20_000:, k] = 2  # S1, a training site
    out = with_site_uncertainty(
        resid, codes, 1, adapted_levels(adapted.adaptations, adapted.levels)
    )
    m = 5 + PRIOR_N
    assert out[:20_000].var() == pytest.approx(m / (m - 2) * (1 + 1 / m), rel=0.04)
    assert np.array_equal(out[20_000:], resid[20_000:])
    again = adapted_levels(readapted.adaptations, readapted.levels)
    assert again == [] and np.array_equal(with_site_uncertainty(resid, codes, 1, again), resid)


def test_the_plan_counts_controls_per_sex_like_the_adaptation_record(fitted, train_df):
    """The page shows the plan before adapting; the adapted model keeps the same record,
    zero counts included (no men at all must be warned about)."""
    from normcore.site_advice import MEASURED_COVERAGE_95, adaptation_warnings

    women = _new_site(train_df[train_df["sex"] == train_df["sex"].iloc[0]].head(5))
    plan = plan_adaptation(women, fitted.schema, fitted.levels, fitted.age_range)
    assert (plan.column, plan.level, plan.n_controls, plan.readapted) == (
        "site",
        "CLINIC",
        5,
        False,
    )
    absent = next(lv for lv in fitted.levels["sex"] if lv != str(train_df["sex"].iloc[0]))
    assert plan.counts["sex"][absent] == 0 and sum(plan.counts["sex"].values()) == 5
    warnings = adaptation_warnings(plan.record(steps=10))
    assert any(f"only 0 controls with sex = {absent}" in w for w in warnings)
    lo, hi = MEASURED_COVERAGE_95[5]
    assert any(f"from 5 controls had {lo:.0f}-{hi:.0f} %" in w for w in warnings)
    adapted = fitted.adapt(women, steps=10)
    record = adapted.adaptations[-1]
    assert {k: record[k] for k in ("column", "level", "n_controls", "counts")} == {
        "column": "site",
        "level": "CLINIC",
        "n_controls": 5,
        "counts": plan.counts,
    }
    assert plan_adaptation(
        train_df[train_df["site"] == "S1"].head(4), fitted.schema, fitted.levels, fitted.age_range
    ).readapted
    few = plan_adaptation(women.head(2), fitted.schema, fitted.levels, fitted.age_range)
    assert few.shortfall is not None and "At least 3 controls" in few.shortfall
