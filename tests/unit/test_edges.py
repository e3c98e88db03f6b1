"""Honest edges of the age range and positive centiles (issue 18, items 1 and 2).

One small model is trained on a table shaped like a clinic's reference: most people young,
a thin tail of older ones. Its IDPs have a constant spread (so any band that narrows is
the model's doing, not the data's); one is a skewed, widely spread volume (a ventricle)
whose raw-unit 2nd centile falls below zero, and one (`additive`) fits raw units better
and is positive there down to normal score -4.5 but not at the furthest centiles the model
answers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from normcore.model import NormativeModel
from normcore.schema import Schema

N_IDPS = 10
BAND = (0.02, 0.98)
MARGIN = 0.08
"""Share of the age range the dashboard's fans extend beyond each end."""
ADDITIVE_NOISE_SEED = 27
"""A draw of `additive`'s noise on which the held-out likelihood prefers raw units in the
model's training split (the choice is noisy between near-equal fits; the tests assert it)."""


def _clinic_table(seed: int) -> pd.DataFrame:
    """320 people aged 18-35 and 20 spread thinly over 35-85; IDPs with a linear age
    decline and a spread that does not change with age; `ventricle` lognormal, growing;
    `additive` normal in raw units, a large sex effect and one spread (0.25 around 1.5
    and 4.5): raw units fit it better, and there its centile at normal score -4.5 stays
    positive, at -6 it does not."""
    rng = np.random.default_rng(seed)
    age = np.concatenate([rng.uniform(18, 35, 320), 35 + 50 * rng.beta(1.0, 2.0, 20)])
    n = len(age)
    out = {"age": age, "sex": rng.choice(["F", "M"], n), "site": "A"}
    for j in range(N_IDPS):
        out[f"thick_{j}"] = 2.6 - 0.004 * (age - 20) + 0.12 * rng.standard_normal(n)
    out["ventricle"] = np.exp(np.log(6000) + 0.02 * (age - 20) + 0.8 * rng.standard_normal(n))
    noise = np.random.default_rng(ADDITIVE_NOISE_SEED).standard_normal(n)
    out["additive"] = 1.5 + 3.0 * (out["sex"] == "M") + 0.25 * noise
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def clinic() -> tuple[NormativeModel, pd.DataFrame]:
    train = _clinic_table(3)
    idps = tuple(c for c in train.columns if c not in ("age", "sex", "site"))
    schema = Schema("age", ("sex", "site"), idps)
    model = NormativeModel(
        max_epochs=4, reference_samples=400, grid_points=11, network=dict(width=32, depth=2)
    ).fit(train, schema)
    return model, train


def _bands(model: NormativeModel, ages: np.ndarray, sex: str) -> np.ndarray:
    """2nd and 98th centiles (ages, 2, IDPs) at each age for one sex, the training site."""
    fan = model.centiles(pd.DataFrame({"age": ages, "sex": sex, "site": "A"}), BAND)
    d = len(model.idps)
    return fan["value"].to_numpy().reshape(len(ages), d, 2).transpose(0, 2, 1)


FAR_QUANTILES = (1e-9, 1e-6, 0.001, 0.02, 0.5, 0.98)
"""Down to Phi(-Z_BOUND): the furthest centile the model answers (`reference.Z_BOUND`)."""


def test_no_centile_of_a_positive_idp_is_negative_at_any_accepted_probability(clinic):
    """At every probability the model answers, at ages far beyond the training range, for
    each sex, unknown sex (a mixture of both) and the training site: the raw-scale
    safety check covers the most extreme score, the new-person spread's tails included."""
    model, train = clinic
    lo, hi = model.age_range
    ages = np.linspace(lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo), 61)
    for sex in ("F", "M", None):
        rows = pd.DataFrame({"age": ages, "sex": sex, "site": "A"})
        fan = model.centiles(rows, FAR_QUANTILES)
        assert (fan["value"] > 0).all(), fan.loc[fan["value"] <= 0].head()


def test_no_centile_of_the_demo_is_negative_at_any_sex_site_or_age(demo_model):
    """The bundled demo (every IDP positive by nature) at every sex, every site and an
    unseen one, ages 2-95, down to the furthest probability it answers."""
    model = NormativeModel.load(demo_model, device="cpu")
    ages = np.linspace(2.0, 95.0, 24)
    sites = [*model.levels["site"], "a site it never saw"]
    rows = pd.DataFrame(
        [{"age": a, "sex": sex, "site": site} for sex in model.levels["sex"]
         for site in sites for a in ages]
    )  # fmt: skip
    fan = model.centiles(rows, FAR_QUANTILES)
    assert (fan["value"] > 0).all(), fan.loc[fan["value"] <= 0].head()


def test_centiles_beyond_the_bound_are_those_at_the_bound(clinic):
    """A probability further out than Phi(-Z_BOUND) is answered at the bound, as z is."""
    from scipy import stats

    from normcore.reference import Z_BOUND

    model, _ = clinic
    rows = pd.DataFrame({"age": [30.0, 70.0], "sex": "F", "site": "A"})
    edge = stats.norm.cdf(-Z_BOUND)
    fan = model.centiles(rows, (1e-15, edge, 1 - edge, 1 - 1e-15))
    far = fan["value"].to_numpy().reshape(2, -1, 4)  # rows, IDPs, quantiles
    np.testing.assert_allclose(far[..., [0, 3]], far[..., [1, 2]])


def test_band_near_the_oldest_training_age_is_not_collapsed(clinic):
    """The spread is constant in the data, so the band at the oldest training ages,
    where a handful of people carry the fit, must stay near its median width."""
    model, train = clinic
    lo, hi = model.age_range
    ages = np.linspace(lo, hi, 41)
    thick = [model.idps.index(f"thick_{j}") for j in range(N_IDPS)]
    for sex in ("F", "M"):
        width = np.diff(_bands(model, ages, sex), axis=1)[:, 0, thick]
        ratio = width / np.median(width, axis=0)
        assert ratio[-4:].min() > 0.5, ratio[-4:].min(axis=0)
        assert ratio.min() > 0.5


def test_bands_just_outside_the_age_range_stay_bounded(clinic):
    """Beyond the training ages (the fans' margins) a band is at most twice as wide as at
    the nearest end of the range, and no narrower than half."""
    model, _ = clinic
    lo, hi = model.age_range
    pad = MARGIN * (hi - lo)
    for sex in ("F", "M"):
        for edge, beyond in ((lo, lo - pad), (hi, hi + pad)):
            width = np.diff(_bands(model, np.array([edge, beyond]), sex), axis=1)[:, 0]
            ratio = width[1] / width[0]
            assert np.all((ratio > 0.5) & (ratio < 2.0)), (edge, ratio)


def _additive_and_ventricle(seed: int, n: int = 1500) -> tuple[np.ndarray, ...]:
    """`thickness`: far from zero, sex and site effects and spread additive in raw units;
    `ventricle`: lognormal near zero, its spread growing with its mean."""
    rng = np.random.default_rng(seed)
    age_z = rng.uniform(-1.7, 1.7, n)
    codes = np.column_stack([rng.integers(1, 3, n), rng.integers(1, 4, n)])
    site_shift = np.array([0.0, -0.8, 0.0, 0.8])[codes[:, 1]]
    thickness = 3.0 - 0.5 * age_z + 0.5 * (codes[:, 0] == 2) + site_shift
    thickness = thickness + 0.2 * rng.standard_normal(n)
    ventricle = np.exp(np.log(300.0) + 0.5 * age_z + 0.8 * rng.standard_normal(n))
    return np.column_stack([thickness, ventricle]), age_z, codes


def test_first_stage_chooses_raw_units_for_additive_effects_and_the_log_for_a_ventricle():
    """By held-out likelihood in raw units: the additive IDP far from zero stays in raw
    units, the skewed one near zero goes on the log scale, and neither has a negative
    centile at the lowest score a stage alone is read at, at any age, sex or site."""
    from normcore.first_stage import FirstStage, lowest_centile, lowest_score

    values, age_z, codes = _additive_and_ventricle(0)
    stage = FirstStage().fit(values, age_z, codes, [3, 4])
    assert stage.transform_.log.tolist() == [False, True]
    assert (lowest_centile(stage, age_z, codes, lowest_score()) > 0).all()
    beyond = np.linspace(-4.0, 4.0, 9)
    floor = stage.inverse(np.full((9, 2), lowest_score()), beyond, np.zeros((9, 2), int))
    assert (floor > 0).all()
    raw = FirstStage(log_positive=False).fit(values, age_z, codes, [3, 4])
    assert lowest_centile(raw, age_z, codes, -3.0)[1] < 0  # why the ventricle must not stay raw


def test_first_stage_keeps_the_log_where_raw_units_fit_better_but_go_negative():
    """Additive effects, but a spread wide against the mean: raw units fit better, yet their
    low centiles cross zero, so the log is kept."""
    from normcore.first_stage import FirstStage, lowest_centile, lowest_score

    values, age_z, codes = _additive_and_ventricle(1)
    wide = values[:, :1] - 1.6 + 0.3 * np.random.default_rng(3).standard_normal((len(values), 1))
    wide = np.abs(wide) + 0.01
    stage = FirstStage().fit(wide, age_z, codes, [3, 4])
    assert stage.transform_.log.tolist() == [True]
    assert (lowest_centile(stage, age_z, codes, lowest_score()) > 0).all()


def test_lowest_score_reaches_past_the_bound_with_heavy_tails():
    """The furthest score a margin is read at: -Z_BOUND for a standard normal, further for
    a wider spread, much further for Student-t tails (the table's tail extrapolation)."""
    from normcore.first_stage import NewPersonSpread, lowest_score
    from normcore.reference import Z_BOUND

    assert lowest_score() == pytest.approx(-Z_BOUND)
    assert lowest_score(NewPersonSpread(1.2, None)) == pytest.approx(-1.2 * Z_BOUND)
    assert lowest_score(NewPersonSpread(1.0, 8.0)) < -1.5 * Z_BOUND


def test_model_stages_put_an_idp_on_the_log_once_the_spread_makes_raw_unsafe():
    """`additive` of the clinic table: raw units fit it better and are positive at the
    score a stage alone is checked at when the spread says its centiles reach further;
    the model's stages (split and kept) then share the log for it, and its kept stage is
    positive at the spread's lowest score."""
    from normcore.first_stage import (
        FirstStage,
        choose_log_scale,
        fit_model_stages,
        lowest_centile,
        lowest_score,
    )
    from normcore.preprocessing import CovariateEncoder
    from normcore.train import validation_split

    train = _clinic_table(3)
    idps = tuple(c for c in train.columns if c not in ("age", "sex", "site"))
    encoder = CovariateEncoder.fit(train, Schema("age", ("sex", "site"), idps))
    values = train[list(idps)].to_numpy(float)
    age_z = encoder.encode_age(train["age"].to_numpy(float))
    codes, _ = encoder.encode_categories(train)
    _, train_rows = validation_split(len(train), NormativeModel(max_epochs=4).config.train, 0)
    j = idps.index("additive")
    alone = choose_log_scale(values, age_z, codes, encoder.n_levels, train_rows, -4.5)
    assert not alone.transform_.log[j]  # checked only at score -4.5, raw would be kept
    stages = fit_model_stages(values, age_z, codes, encoder.n_levels, train_rows, 0)
    reach = lowest_score(stages.spread)
    raw = FirstStage(log_positive=False).fit(values, age_z, codes, encoder.n_levels)
    assert lowest_centile(raw, age_z, codes, reach)[j] < 0
    assert stages.split.transform_.log[j] and stages.kept.transform_.log[j]
    assert (lowest_centile(stages.kept, age_z, codes, reach) > 0).all()
