import numpy as np
import pytest

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
    assert adapted.encoder_.levels["site"][-1] == "CLINIC"
    assert fitted.encoder_.levels["site"] == ["S0", "S1"]
    record = adapted.adaptations_[-1]
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
    assert again.adaptations_ == adapted.adaptations_
    people = _new_site(train_df.tail(5))
    assert np.allclose(again.score(people)["centile"], adapted.score(people)["centile"])


def test_readapting_an_existing_site_keeps_the_level_count(fitted, train_df):
    controls = train_df[train_df["site"] == "S1"].head(30)
    adapted = fitted.adapt(controls, steps=20)
    assert adapted.encoder_.levels["site"] == ["S0", "S1"] and adapted.adaptations_[-1]["readapted"]


def test_too_few_controls_is_refused(fitted, train_df):
    with pytest.raises(DataError, match="at least 3 controls"):
        fitted.adapt(_new_site(train_df.head(2)))


def test_controls_from_several_sites_are_refused(fitted, train_df):
    with pytest.raises(DataError, match="one site"):
        fitted.adapt(train_df.head(40))


def test_controls_with_a_column_missing_name_it(fitted, train_df):
    with pytest.raises(DataError, match="idp_002"):
        fitted.adapt(_new_site(train_df.head(30)).drop(columns="idp_002"))


def test_site_argument_overrides_the_column(fitted, train_df):
    adapted = fitted.adapt(train_df.head(20), site="CLINIC2", steps=10)
    assert adapted.adaptations_[-1]["level"] == "CLINIC2"


def test_a_site_adapted_from_few_controls_gets_posterior_predictive_spread(fitted, train_df):
    """Draws at a site learned from n controls are widened as a normal-inverse-chi-squared
    predictive with m = n + ADAPT_PRIOR_N: variance m/(m-2) * (1 + 1/m); other sites and
    re-adapted training sites are left exactly as they were."""
    from normcore.model import ADAPT_PRIOR_N

    adapted = fitted.adapt(_new_site(train_df.head(5)), steps=10)
    readapted = fitted.adapt(train_df[train_df["site"] == "S1"].head(5), steps=10)
    rng = np.random.default_rng(0)
    resid = rng.standard_normal((40_000, 3))
    codes = np.zeros((40_000, 2), dtype=np.int64)
    k = list(adapted.encoder_.levels).index("site")
    codes[: 20_000, k] = 3  # CLINIC, the level added by adaptation
    codes[20_000 :, k] = 2  # S1, a training site
    out = adapted._with_site_uncertainty(resid, codes, seed=1)
    m = 5 + ADAPT_PRIOR_N
    assert out[:20_000].var() == pytest.approx(m / (m - 2) * (1 + 1 / m), rel=0.04)
    assert np.array_equal(out[20_000:], resid[20_000:])
    assert np.array_equal(readapted._with_site_uncertainty(resid, codes, seed=1), resid)
