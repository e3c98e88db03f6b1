"""Conditional centiles and people with missing IDPs (normcore.conditional, model.score)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from normcore.cli import main
from normcore.conditional import given_set, smoothed_cdf
from normcore.errors import DataError
from normcore.model import NormativeModel
from normcore.schema import Schema
from normcore.synthetic import SyntheticSpec, idp_names, simulate, true_conditional_cdf

SUBGROUP = SyntheticSpec(
    n_idps=4,
    n_sites=1,
    dependence="subgroup",
    coupling=(0.6, 0.9),
    prevalence=(0.2, 0.6),
    subgroup_shift=2.0,
    seed=1,
)


@pytest.fixture(scope="module")
def subgroup_model() -> NormativeModel:
    """A small masked model of a truth that is not a Gaussian copula (shared subgroup,
    coupling growing with age): enough to tell conditioning from none."""
    train = simulate(SUBGROUP, 1000, seed=1)
    schema = Schema(age="age", categorical=("sex",), idps=tuple(idp_names(SUBGROUP)))
    model = NormativeModel(
        max_epochs=300, reference_samples=300, grid_points=11, network=dict(width=64, depth=2)
    )
    return model.fit(train, schema)


def test_conditional_centiles_follow_the_exact_conditional_law(subgroup_model):
    """Given two of four IDPs, the model's conditional centiles are near the exact ones:
    far nearer than its unconditional centiles are (the error a broken conditioning
    would leave), and uniform over held-out people, as exact conditional centiles are."""
    people = simulate(SUBGROUP, 100, seed=2)
    given = ["idp_000", "idp_002"]
    truth = 100 * true_conditional_cdf(SUBGROUP, people, given)[:, [1, 3]]
    scored = subgroup_model.score(people, given=given)
    assert set(scored["idp"]) == {"idp_001", "idp_003"}
    assert (scored["given"] == "idp_000,idp_002").all()
    conditional = scored["centile"].to_numpy().reshape(len(people), 2)
    plain = subgroup_model.score(people)["centile"].to_numpy().reshape(len(people), 4)[:, [1, 3]]
    error, plain_error = np.abs(conditional - truth).mean(), np.abs(plain - truth).mean()
    assert error < 0.6 * plain_error, (error, plain_error)
    assert stats.kstest(conditional.ravel() / 100, "uniform").statistic < 0.12
    se = scored["centile_se"].to_numpy()
    assert np.all((se > 0) & (se < 5))


def test_smoothed_cdf_is_near_the_exact_cdf_and_keeps_the_spread():
    rng = np.random.default_rng(0)
    draws = rng.standard_normal((200, 400, 1))
    at = rng.standard_normal((200, 1))
    p, se = smoothed_cdf(draws, at)
    exact = stats.norm.cdf(at)
    assert np.abs(p - exact).mean() < 0.025
    # the error it reports is the error it makes, to within a factor
    assert 0.6 < np.sqrt(np.mean((p - exact) ** 2)) / np.sqrt(np.mean(se**2)) < 1.6
    # variance kept: at the 2nd centile of the draws the smoothed CDF is not inflated
    low = np.quantile(draws, 0.02, axis=1)
    assert np.mean(smoothed_cdf(draws, low)[0]) == pytest.approx(0.02, abs=0.006)


def test_given_set_names_unknown_idps_and_refuses_every_idp():
    idps = ["eTIV", "Left-Hippocampus", "Right-Hippocampus"]
    assert given_set(idps, "eTIV").tolist() == [True, False, False]
    assert not given_set(idps, None).any() and not given_set(idps, []).any()
    with pytest.raises(DataError, match="'Left-Hipocampus' \\(did you mean Left-Hippocampus"):
        given_set(idps, ["Left-Hipocampus"])
    with pytest.raises(DataError, match="all 3 IDPs"):
        given_set(idps, idps)


def test_a_model_trained_without_masks_refuses_given_and_scores_what_is_present(
    train_df, test_df, schema, tiny_settings
):
    model = NormativeModel(**tiny_settings)
    model.config = dataclasses.replace(model.config, conditional=False)
    model.fit(train_df, schema)
    loaded = NormativeModel.from_bytes(model.to_bytes())
    assert len(loaded.score(test_df)) == len(test_df) * 3
    with pytest.raises(ValueError, match="trained before conditional scoring; refit it"):
        loaded.score(test_df, given=["idp_000"])
    blank = test_df.copy()
    blank.loc[0, "idp_001"] = np.nan
    scored = loaded.score(blank)
    lacking = (scored["row"] == 0) & (scored["idp"] == "idp_001")
    assert scored.loc[lacking, ["centile", "imputed_q50"]].isna().all(axis=None)
    assert scored.loc[lacking, "missing"].eq("idp_001").all()
    others = scored.loc[~lacking].reset_index(drop=True)
    full = loaded.score(test_df).loc[~lacking.to_numpy()].reset_index(drop=True)
    assert np.allclose(others["centile"], full["centile"])


def _with_blanks(test_df: pd.DataFrame) -> pd.DataFrame:
    blank = test_df.drop(columns="idp_002")
    blank.loc[[1, 4], "idp_001"] = np.nan
    return blank


def test_blank_cells_and_missing_columns_are_scored_and_imputed(fitted, test_df):
    """Present IDPs score as in the full table; missing ones have no centile but an
    increasing imputed band; every row names its person's missing IDPs."""
    full = fitted.score(test_df)
    blank = _with_blanks(test_df)
    report = fitted.check(blank)
    assert report.ok and any("no column" in str(p) for p in report.warnings)
    assert any(p.column == "idp_001" and p.rows == (1, 4) for p in report.warnings)
    scored = fitted.score(blank)
    assert len(scored) == len(full)
    present = scored["value"].notna().to_numpy()
    assert np.allclose(scored["centile"][present], full["centile"][present])
    missing = scored[~present]
    assert missing["centile"].isna().all() and missing["z"].isna().all()
    assert set(missing["idp"][missing["row"] == 1]) == {"idp_001", "idp_002"}
    bands = missing[["imputed_q02", "imputed_q25", "imputed_q50", "imputed_q75", "imputed_q98"]]
    assert np.all(np.diff(bands.to_numpy(), axis=1) >= 0)
    assert scored[present][["imputed_q02", "imputed_q98"]].isna().all().all()
    assert (scored["missing"][scored["row"] == 4] == "idp_001,idp_002").all()
    assert (scored["missing"][scored["row"] == 0] == "idp_002").all()


def test_cli_scores_given_and_blank_tables_and_refuses_bad_given_sets(
    fitted, test_df, tmp_path, capsys
):
    model_path, table, out = tmp_path / "m.normcore", tmp_path / "t.csv", tmp_path / "s.csv"
    fitted.save(model_path)
    _with_blanks(test_df).to_csv(table, index=False)
    assert main(["score", str(model_path), str(table), "--out", str(out)]) == 0
    scores = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert scores.loc[scores["value"].isna(), "imputed_q50"].notna().all()
    assert main(["score", str(model_path), str(table), "--out", str(out), "--given",
                 "idp_000"]) == 0  # fmt: skip
    scores = pd.read_csv(out)
    assert set(scores["idp"]) == {"idp_001", "idp_002"}
    capsys.readouterr()
    for given, message in (("idp_000,idp_9", "'idp_9'"), ("idp_000,idp_001,idp_002", "all 3")):
        code = main(["score", str(model_path), str(table), "--out", str(out), "--given", given])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("model", ["fitted", "fitted_prior"])
def test_draws_of_a_person_share_covariates_to_rounding(model, request):
    """K draws per person with the covariates read once per person equal one draw per row
    of the person repeated K times (same seed, same noise), with and without the
    denoiser's Gaussian prior (whose age level rides in the covariate embedding)."""
    joint, k = request.getfixturevalue(model).joint_, 7
    rng = np.random.default_rng(0)
    age_z = rng.standard_normal(3).astype(np.float32)
    codes = np.array([[1, 1], [2, 2], [1, 0]])
    given = np.array([[True, False, False], [True, False, True], [False, True, False]])
    values = rng.standard_normal((3, 3))
    grouped = joint.draw_given(age_z, codes, given, values, seed=5, draws=k)
    rep = np.repeat(np.arange(3), k)
    per_row = joint.draw_given(age_z[rep], codes[rep], given[rep], values[rep], seed=5)
    assert grouped.shape == (3, k, 3)
    np.testing.assert_allclose(grouped.reshape(-1, 3), per_row[:, 0], atol=1e-5)
    clamped = np.broadcast_to(given[:, None, :], grouped.shape)
    np.testing.assert_allclose(
        grouped[clamped], np.broadcast_to(values[:, None, :], grouped.shape)[clamped], rtol=1e-6
    )


@pytest.mark.parametrize(("backbone", "dims"), [("film", 5), ("saint", 5), ("saint", 45)])
@pytest.mark.parametrize("prior", [False, True])
def test_both_backbones_give_the_same_v_with_covariates_per_person(backbone, dims, prior):
    import torch

    from normcore.denoisers import build_denoiser
    from normcore.diffusion import Schedule

    torch.manual_seed(0)
    schedule = Schedule("cosine", 1000) if prior else None
    net = build_denoiser(backbone, dims, [3], 1000, masked=True, prior=schedule).eval()
    for p in net.parameters():  # zero-initialised layers would hide the conditioning
        torch.nn.init.normal_(p, std=0.2)
    k = 4
    x = torch.randn(3 * k, dims)
    observed = (torch.rand(3 * k, dims) < 0.4).float()
    with torch.inference_mode():
        h = net.embed(torch.randn(3), torch.tensor([[0], [1], [2]]))
        t = torch.full((1,), 300)
        per_person = net(x, t, h, observed)
        per_row = net(x, t, h.repeat_interleave(k, 0), observed)
        assert per_row.abs().max() > 0.1
        torch.testing.assert_close(per_person, per_row, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="cannot share"):
            net(x[:-1], t, h, observed[:-1])


def test_a_model_with_the_gaussian_prior_scores_the_same_after_a_round_trip(
    fitted_prior, test_df
):
    """Its prior (covariances at anchor ages) is saved with the weights: the reloaded
    model's conditional centiles and imputed bands equal the fitted model's."""
    idp = fitted_prior.idps[0]
    blank = test_df.head(12).copy()
    blank.loc[:3, fitted_prior.idps[1]] = np.nan
    loaded = NormativeModel.from_bytes(fitted_prior.to_bytes(), device="cpu")
    assert loaded.config.gaussian_prior
    before = fitted_prior.score(blank, given=[idp])
    after = loaded.score(blank, given=[idp])
    pd.testing.assert_frame_equal(before, after)
    assert before["centile"].notna().any() and before.filter(like="imputed_").notna().any().any()


def test_deviation_over_present_idps_is_finite_and_calibrated(subgroup_model):
    """A person with blank cells gets a finite deviation over the IDPs they have, ranked
    so that held-out controls with random blanks stay roughly uniform (read as if the
    blank cells held values, they all came out near 100)."""
    people = simulate(SUBGROUP, 400, seed=3)
    complete = subgroup_model.deviation(people)
    rng = np.random.default_rng(3)
    blank = people.copy()
    rows = np.flatnonzero(rng.random(len(people)) < 0.5)
    idps = list(subgroup_model.idps)
    lost = rng.integers(1, 3, size=len(rows))
    for row, count in zip(rows, lost, strict=True):
        blank.loc[row, rng.choice(idps, size=count, replace=False)] = np.nan
    dev = subgroup_model.deviation(blank)
    assert dev["mahalanobis"].notna().all() and np.isfinite(dev["deviation_centile"]).all()
    assert dev["n_idps"].tolist() == blank[idps].notna().sum(axis=1).tolist()
    assert dev.loc[rows, "missing"].str.count(",").add(1).tolist() == lost.tolist()
    assert (dev.loc[~dev.index.isin(rows), "missing"] == "").all()
    kept = ~dev.index.isin(rows)
    np.testing.assert_allclose(
        dev.loc[kept, "deviation_centile"], complete.loc[kept, "deviation_centile"]
    )
    partial = dev.loc[rows, "deviation_centile"].to_numpy() / 100
    assert stats.kstest(partial, "uniform").statistic < 0.15
    assert np.mean(partial > 0.95) < 0.15


def test_an_implausible_given_value_is_treated_as_missing(fitted, test_df):
    """A given cell no real person has is neither conditioned on nor scored: the row is
    scored exactly as with that cell blank, and `given` and `missing` say so."""
    people = test_df.iloc[:6].reset_index(drop=True)
    implausible, blank = people.copy(), people.copy()
    implausible.loc[2, "idp_000"] = 1e200
    blank.loc[2, "idp_000"] = np.nan
    scored = fitted.score(implausible, given=["idp_000"])
    as_blank = fitted.score(blank, given=["idp_000"])
    row = scored[scored["row"] == 2]
    assert (row["given"] == "").all() and (row["missing"] == "idp_000").all()
    assert (scored[scored["row"] != 2]["given"] == "idp_000").all()
    np.testing.assert_allclose(scored["centile"], as_blank["centile"], equal_nan=True)
    np.testing.assert_allclose(scored["imputed_q50"], as_blank["imputed_q50"], equal_nan=True)


def test_saint_tokens_can_hold_several_neighbouring_idps():
    """44 IDPs, 3 per token: 15 tokens; every IDP's v answers to its own cell and its
    mask bit, and the last token's cell past the IDPs is never returned."""
    import torch

    from normcore.denoisers import build_denoiser

    torch.manual_seed(0)
    assert build_denoiser("saint", 44, [3], 1000).n_tokens == 44  # a token each by default
    net = build_denoiser("saint", 44, [3], 1000, masked=True, idps_per_token=3).eval()
    assert (net.n_tokens, net.group) == (15, 3)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, observed = torch.randn(6, 44), torch.zeros(6, 44)
    with torch.inference_mode():
        h, t = net.embed(torch.randn(6), torch.ones(6, 1, dtype=torch.long)), torch.full((6,), 50)
        v = net(x, t, h, observed)
        assert v.shape == (6, 44)
        for j in (0, 22, 43):
            moved, seen = x.clone(), observed.clone()
            moved[:, j] += 1.0
            seen[:, j] = 1.0
            assert (net(moved, t, h, observed) - v)[:, j].abs().min() > 1e-4
            assert (net(x, t, h, seen) - v)[:, j].abs().min() > 1e-4


@pytest.mark.parametrize("dof", [None, 6.0])
def test_new_peoples_scores_meet_conditional_draws_on_the_training_scale(dof):
    """The spread's own quantiles go to the standard normal's and back: a new person at
    their law's p-th quantile sits at the training people's p-th quantile, which is where
    the denoiser's draws are made."""
    from normcore.first_stage import NewPersonSpread

    spread = NewPersonSpread(1.3, dof)
    p = np.array([1e-9, 0.001, 0.02, 0.3, 0.5, 0.8, 0.999, 1 - 1e-9])
    new = spread.quantiles(p)
    np.testing.assert_allclose(spread.as_training_scores(new), stats.norm.ppf(p), atol=1e-6)
    np.testing.assert_allclose(spread.from_training_scores(stats.norm.ppf(p)), new, rtol=1e-6)
    assert np.isnan(spread.as_training_scores(np.array([np.nan]))).all()


def test_a_wider_new_person_spread_makes_conditional_centiles_less_extreme(fitted, test_df):
    """Conditional centiles answer for new people: with their scores spread twice as wide
    as the training people's, the same values are half as far out (the plain centiles'
    rule), and imputed bands are about twice as wide."""
    from normcore.first_stage import NewPersonSpread

    wide = NormativeModel.from_bytes(fitted.to_bytes())
    wide.joint_.spread = NewPersonSpread(2.0, None)
    narrow = NormativeModel.from_bytes(fitted.to_bytes())
    narrow.joint_.spread = NewPersonSpread(1.0, None)
    given = ["idp_000"]
    z_wide = wide.score(test_df, given=given)["z"].to_numpy()
    z_narrow = narrow.score(test_df, given=given)["z"].to_numpy()
    ratio = np.std(z_wide) / np.std(z_narrow)
    assert 0.4 < ratio < 0.65, ratio

    def band_width(model: NormativeModel) -> np.ndarray:
        scored = model.score(_with_blanks(test_df))
        lacking = scored[scored["value"].isna()]
        return (lacking["imputed_q98"] - lacking["imputed_q02"]).to_numpy()

    assert np.median(band_width(wide) / band_width(narrow)) > 1.6
