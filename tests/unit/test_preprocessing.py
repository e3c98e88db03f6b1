import numpy as np
import pandas as pd
import pytest

from normcore.preprocessing import CovariateEncoder, IDPTransform
from normcore.schema import Schema


def test_idp_transform_round_trips_and_reduces_skew():
    rng = np.random.default_rng(0)
    skewed = np.column_stack([rng.lognormal(8, 0.6, 2000), rng.normal(2.5, 0.1, 2000)])
    t = IDPTransform.fit(skewed)
    z = t.transform(skewed)
    assert np.allclose(t.inverse(z), skewed, rtol=1e-9)
    assert abs(pd.Series(z[:, 0]).skew()) < abs(pd.Series(skewed[:, 0]).skew()) / 3
    assert np.allclose(z.mean(0), 0, atol=1e-9) and np.allclose(z.std(0), 1, atol=1e-9)


def test_idp_transform_inverse_is_finite_far_in_the_tails():
    rng = np.random.default_rng(1)
    t = IDPTransform.fit(rng.lognormal(0, 1, (500, 3)))
    assert np.all((t.lam > 0) & (t.lam < 2))
    assert np.isfinite(t.inverse(np.array([[-40.0, 0.0, 40.0]]))).all()


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


def test_location_scale_removes_a_nonlinear_heteroscedastic_age_effect_and_inverts():
    from normcore.preprocessing import LocationScale

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
