import copy
import dataclasses
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from normcore.errors import DataError, NotFittedError
from normcore.first_stage import NewPersonSpread
from normcore.joint import JointModel, moment_match
from normcore.model import DEFAULT_QUANTILES, NormativeModel
from normcore.reference import PROBABILITY_LEVELS
from normcore.schema import Schema


def test_unfitted_model_says_so():
    with pytest.raises(NotFittedError, match="not fitted"):
        NormativeModel().score(pd.DataFrame({"age": [30]}))


def test_score_has_the_documented_columns_and_consistent_values(fitted, test_df, schema):
    scores = fitted.score(test_df)
    assert list(scores.columns) == [
        "row", "subject_id", "idp", "value", "centile", "z", "centile_se",
        "out_of_age_range", "unseen_levels", "out_of_site_age_range", "beyond_reference",
        "implausible", "given", "missing",
        *(f"imputed_q{round(100 * q):02d}" for q in DEFAULT_QUANTILES),
    ]  # fmt: skip
    assert len(scores) == len(test_df) * len(schema.idps)
    assert scores["centile"].between(0, 100).all()
    assert np.allclose(scores["z"], stats.norm.ppf(scores["centile"] / 100), atol=1e-6)
    # Known sex x site: margins are the first stage's, exact, so no Monte-Carlo error.
    assert (scores["centile_se"] == 0).all()
    first = scores[scores["row"] == 0].set_index("idp")["value"]
    assert np.allclose(first[list(schema.idps)], test_df.loc[0, list(schema.idps)].astype(float))


def test_unseen_site_is_scored_with_the_unknown_level_and_flagged(fitted, test_df):
    df = test_df.head(5).copy()
    df["site"] = "NEW_SCANNER"
    assert [p.column for p in fitted.check(df).warnings] == ["site"]
    scores = fitted.score(df)
    assert (scores["unseen_levels"] == "site").all()
    assert np.isfinite(scores["z"]).all()
    # An unknown site's margins are the denoiser's draws, tabled with Monte-Carlo error.
    assert (scores["centile_se"] > 0).all() and (scores["centile_se"] < 10).all()


def test_age_outside_the_training_range_is_flagged_not_hidden(fitted, test_df):
    df = test_df.head(3).copy()
    df.loc[0, "age"] = 95.0
    scores = fitted.score(df)
    flagged = scores.groupby("row")["out_of_age_range"].first()
    assert flagged.tolist() == [True, False, False]


def test_missing_idp_column_is_reported_by_name_and_scored_as_missing(fitted, test_df):
    table = test_df.drop(columns="idp_001")
    assert any("'idp_001'" in str(p) for p in fitted.check(table).warnings)
    scores = fitted.score(table)
    assert scores.loc[scores["idp"] == "idp_001", "centile"].isna().all()


def test_centiles_are_monotone_in_the_quantile_and_long_format(fitted):
    grid = pd.DataFrame(
        {"age": [25.0, 50.0, 75.0], "sex": ["F", "M", "F"], "site": ["S0", "S1", "S0"]}
    )
    fan = fitted.centiles(grid, [0.02, 0.5, 0.98])
    assert list(fan.columns) == ["age", "sex", "site", "idp", "quantile", "value"]
    assert len(fan) == 3 * 3 * 3
    wide = fan.pivot_table(index=["age", "idp"], columns="quantile", values="value")
    assert (np.diff(wide.to_numpy(), axis=1) > 0).all()
    with pytest.raises(ValueError, match="between 0 and 1"):
        fitted.centiles(grid, [0.0, 0.5])


def test_centiles_and_score_agree(fitted, test_df):
    person = test_df.head(1)
    median = fitted.centiles(person[["age", "sex", "site"]], [0.5]).set_index("idp")["value"]
    at_median = person.copy()
    for idp, v in median.items():
        at_median[idp] = v
    assert np.allclose(fitted.score(at_median)["centile"], 50.0, atol=0.5)


def test_sample_returns_n_rows_per_grid_row(fitted):
    grid = pd.DataFrame({"age": [30.0, 60.0], "sex": ["F", "M"], "site": ["S0", "S1"]})
    s = fitted.sample(grid, 7, seed=3)
    assert len(s) == 14 and s["grid_row"].tolist() == [0] * 7 + [1] * 7
    assert np.isfinite(s[list(fitted.idps)].to_numpy()).all()
    assert s.equals(fitted.sample(grid, 7, seed=3))


@pytest.mark.parametrize("n", [0, -3, 2.5, True, "5"])
def test_sample_refuses_a_count_that_is_not_a_whole_positive_number(fitted, n):
    grid = pd.DataFrame({"age": [30.0], "sex": ["F"], "site": ["S0"]})
    with pytest.raises(ValueError, match="n must be a whole number"):
        fitted.sample(grid, n)


def test_sample_removes_the_denoisers_mean_offset_at_known_combinations(fitted):
    """Draws follow the centiles' margins: the table's `draw_offset` (the denoiser's mean
    error where the first stage gives the margins) is taken off every draw there."""
    model = NormativeModel.from_bytes(fitted.to_bytes(), device="cpu")
    grid = pd.DataFrame({"age": [30.0, 60.0], "sex": ["F", "M"], "site": ["S0", "S1"]})
    model.reference_.draw_offsets[:] = 0.0
    plain = model.sample(grid, 200, seed=5)
    model.reference_.draw_offsets[:, 0, :] = 0.5  # the constant term: half an SD up
    moved = model.sample(grid, 200, seed=5)
    idps = list(model.idps)
    assert (moved[idps].to_numpy() < plain[idps].to_numpy()).all()


def test_deviation_gives_one_centile_per_person(fitted, test_df):
    dev = fitted.deviation(test_df)
    assert len(dev) == len(test_df) and dev["deviation_centile"].between(0, 100).all()
    extreme = test_df.head(1).copy()
    for idp in fitted.idps:
        extreme[idp] = extreme[idp] * 3
    assert fitted.deviation(extreme)["deviation_centile"].iloc[0] > 99


def test_fit_is_reproducible_with_a_seed(train_df, schema):
    kw = dict(max_epochs=2, reference_samples=100, grid_points=5, network=dict(width=16, depth=1))
    a = NormativeModel(seed=4, **kw).fit(train_df, schema)
    b = NormativeModel(seed=4, **kw).fit(train_df, schema)
    assert [h["loss"] for h in a.history_] == [h["loss"] for h in b.history_]
    assert np.array_equal(a.reference_.quantiles, b.reference_.quantiles, equal_nan=True)


def test_fit_reports_progress_and_can_be_stopped(train_df, schema):
    seen = []
    model = NormativeModel(
        max_epochs=50, reference_samples=100, grid_points=5, network=dict(width=16, depth=1)
    )
    model.fit(train_df, schema, progress=seen.append, should_stop=lambda: len(seen) >= 1)
    train = [p for p in seen if p["phase"] == "train"]
    assert len(train) == 1 and {"epoch", "loss", "val_loss", "eta_seconds"} <= train[0].keys()
    assert seen[-1] == {"phase": "reference", "fraction": 1.0}


def test_fit_refuses_a_bad_table_with_column_and_rows(train_df, schema):
    bad = train_df.copy()
    bad["idp_000"] = bad["idp_000"].astype(object)
    bad.loc[[3, 8], "idp_000"] = "n/a?"
    with pytest.raises(DataError, match="idp_000") as err:
        NormativeModel(max_epochs=1).fit(bad, schema)
    assert "3" in str(err.value) and "8" in str(err.value)


def test_saved_model_scores_identically_in_a_new_process(fitted, test_df, tmp_path):
    model_path, table_path = tmp_path / "m.normcore", tmp_path / "t.csv"
    fitted.save(model_path)
    test_df.to_csv(table_path, index=False)
    code = (
        "import sys, pandas as pd; from normcore import NormativeModel;"
        "m = NormativeModel.load(sys.argv[1]);"
        "m.score(pd.read_csv(sys.argv[2])).to_csv(sys.stdout, index=False)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(model_path), str(table_path)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    from io import StringIO

    again = pd.read_csv(StringIO(out.stdout))
    assert np.allclose(again["centile"], fitted.score(test_df)["centile"], atol=1e-6)


def test_schema_with_only_age_covariate_works(train_df):
    schema = Schema(age="age", categorical=(), idps=("idp_000", "idp_001"))
    m = NormativeModel(
        max_epochs=2, reference_samples=200, grid_points=5, network=dict(width=16, depth=1)
    )
    m.fit(train_df, schema)
    assert m.score(train_df.head(4))["centile"].between(0, 100).all()


def test_moment_match_gives_draws_the_mean_and_covariance_of_the_scores():
    rng = np.random.default_rng(5)
    target = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.0]])
    scores = rng.multivariate_normal(np.zeros(3), target, size=20_000)
    weak = np.array([[0.81, 0.2, 0.0], [0.2, 0.9, 0.1], [0.0, 0.1, 1.0]])
    draws = rng.multivariate_normal([0.1, 0.0, -0.2], weak, size=(100, 200))
    matrix, offset = moment_match(draws, scores)
    matched = (draws @ matrix + offset).reshape(-1, 3)
    assert np.allclose(matched.mean(axis=0), scores.mean(axis=0))
    assert np.allclose(np.cov(matched, rowvar=False), np.cov(scores, rowvar=False), atol=0.01)
    assert np.allclose(matrix, matrix.T)  # the transport map, not an arbitrary rotation
    matrix, offset = moment_match(draws, scores, enough=False)
    assert np.array_equal(matrix, np.eye(3)) and np.all(offset == 0.0)


def test_fitted_model_draws_have_the_first_stage_spread_and_correlation(fitted, train_df):
    """The model's draws over the training people's covariates have the SD (widened by
    the new-person spread) and the correlations of their first-stage scores, whatever the
    (tiny) denoiser learned."""
    ages = train_df["age"].to_numpy(dtype=np.float64)
    codes, _ = fitted.encoder_.encode_categories(train_df)
    age_z = fitted.encoder_.encode_age(ages)
    scores = fitted.first_stage_.transform(
        train_df[fitted.idps].to_numpy(dtype=np.float64), age_z, codes
    )
    draws = fitted._sample_scores(np.repeat(ages, 20), np.repeat(codes, 20, axis=0), seed=9)
    scale, dof, *_ = fitted.corrections["new_person_spread"]
    widening = scale * (1.0 if dof is None else np.sqrt(dof / (dof - 2)))
    ratio = draws.std(axis=0) / (scores.std(axis=0) * widening)
    assert ratio == pytest.approx(np.ones(len(ratio)), abs=0.1)
    pairs = np.triu_indices(scores.shape[1], 1)
    drawn, real = np.corrcoef(draws.T)[pairs], np.corrcoef(scores.T)[pairs]
    assert drawn == pytest.approx(real, abs=0.1)


def test_validation_estimates_use_a_first_stage_without_the_validation_rows(
    fitted, train_df, schema, monkeypatch
):
    """The sampler's corrections and the deviation calibration are measured on validation
    rows, so they must see a first stage fitted without them (else they are optimistic);
    the margins the model keeps come from every row. Moving the validation rows far away
    leaves the training rows' scores the corrections see unchanged, and moves the kept
    first stage."""
    from normcore.train import validation_split

    val, train = validation_split(len(train_df), fitted.config.train, fitted.config.seed)
    moved = train_df.copy()
    for idp in schema.idps:
        moved.loc[moved.index[val], idp] += 3 * train_df[idp].std()
    seen = []
    calibrate = JointModel.calibrate.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs)
        return calibrate(cls, *args, **kwargs)

    monkeypatch.setattr(JointModel, "calibrate", classmethod(spy))
    models = []
    for table in (moved, train_df):
        model = NormativeModel.__new__(NormativeModel)
        model.config = copy.deepcopy(fitted.config)
        model.threads, model.device = fitted.threads, fitted.device
        models.append(model.fit(table, schema))
    assert [list(s["val_rows"]) for s in seen] == [list(val), list(val)]
    split = [s["split_scores"][train] for s in seen]
    assert np.allclose(*split)
    assert not np.allclose(*[s["kept_scores"][train] for s in seen])
    final = [m.first_stage_.location_scale_.mean_coef for m in models]
    assert not np.allclose(*final)
    idps = train_df[list(schema.idps)].to_numpy(dtype=np.float64)
    transform = models[1].first_stage_.transform_
    typical = np.where(transform.log, np.exp(np.log(idps).mean(0)), idps.mean(0))
    assert np.allclose(transform.centre, typical)


def test_heavy_tailed_widening_keeps_linear_relations_between_idps():
    """One Student-t factor per draw: a total that is the sum of its parts stays the sum
    (a factor per IDP made it a direction real people never take), and each IDP's
    margin is still the Student-t."""
    rng = np.random.default_rng(4)
    parts = rng.standard_normal((200_000, 2))
    draws = np.column_stack([parts, parts.sum(axis=1) / np.sqrt(2.0)])
    spread = NewPersonSpread(1.1, 5.0)
    wide = spread.widen(draws, seed=2)
    assert np.allclose(wide[:, 2], wide[:, :2].sum(axis=1) / np.sqrt(2.0))
    for j in range(3):
        drawn = np.quantile(wide[:, j], PROBABILITY_LEVELS)
        assert drawn == pytest.approx(spread.quantiles(PROBABILITY_LEVELS), rel=0.03, abs=0.02)


def test_table_prior_is_what_the_model_draws_from_a_standard_normal_denoiser(fitted):
    """The reference table shrinks towards `NewPersonSpread.quantiles`: it must be the law
    of the joint model's own widening of standard normal draws, Student-t tails included."""
    normal = np.random.default_rng(3).standard_normal((200_000, 1))
    for spread in (NewPersonSpread(1.1, 5.0), NewPersonSpread(0.95, None)):
        drawn = np.quantile(spread.widen(normal, seed=1), PROBABILITY_LEVELS)
        assert drawn == pytest.approx(spread.quantiles(PROBABILITY_LEVELS), rel=0.02, abs=0.01)


def test_check_names_sites_learned_from_few_people(fitted, test_df):
    """With a site term, a site of few training people is named in the validation report
    (a warning, as information: its rows are still scored), a big one is not."""
    model = copy.copy(fitted)
    k = model.schema.categorical.index("site")
    counts = [[100] * len(levels) for levels in model.encoder_.levels.values()]
    counts[k][0] = 5  # the first site: 5 training people
    spread = NewPersonSpread(1.0, None, 2.0, tuple(tuple(c) for c in counts))
    model.joint_ = dataclasses.replace(fitted.joint_, spread=spread)
    small, big = list(model.encoder_.levels["site"])[:2]
    report = model.check(test_df)
    named = [p.message for p in report.problems if "training people" in p.message]
    assert len(named) == 1 and f"'{small}'" in named[0] and "1.18 times" in named[0]
    assert not report.errors
    assert not any("training people" in p.message for p in fitted.check(test_df).problems)


def test_draws_in_runs_of_one_age_read_the_covariates_once_and_draw_the_same(
    fitted, monkeypatch
):
    """Rows in runs of equal covariates (the reference table's draws, the moment matching's
    draws per validation person) share the network's reading of them: the draws are those
    of the per-row path to rounding."""
    from normcore import joint as joint_module

    codes = np.repeat(np.array([[1, 1], [2, 0], [0, 2]]), 4, axis=0)
    ages = np.repeat(np.array([-1.0, 0.2, 1.5], dtype=np.float32), 4)
    assert joint_module.shared_runs(ages, codes) == 4
    assert joint_module.shared_runs(ages[1:], codes[1:]) == 1  # runs of 3, 4, 4
    assert joint_module.shared_runs(ages[:4], codes[:4]) == 4
    shared = fitted.joint_.raw_draws(ages, codes, seed=5)
    monkeypatch.setattr(joint_module, "shared_runs", lambda a, c: 1)
    per_row = fitted.joint_.raw_draws(ages, codes, seed=5)
    assert np.abs(per_row).max() > 0.1
    np.testing.assert_allclose(shared, per_row, atol=1e-5, rtol=1e-5)


def test_a_validation_person_the_split_first_stage_cannot_score_is_left_out(
    train_df, schema, tiny_settings
):
    """With `keep_outliers`, an impossible value (a negative volume) is kept. When it falls
    in a validation row, the first stage fitted without that row maps it to no score
    (the IDP is log-transformed), and that row must not reach the validation loss, the
    sampler's x0 covariance or the moment matching: it once made all three nan, so
    training ran to its cap and the fit failed with an unrelated "SVD did not converge"."""
    from normcore.train import validation_split

    model = NormativeModel(seed=3, **tiny_settings)
    val, _ = validation_split(len(train_df), model.config.train, model.config.seed)
    bad = train_df.copy()
    idp = schema.idps[0]
    bad.loc[bad.index[val[0]], idp] = -50 * train_df[idp].abs().max()
    model.fit(bad, schema, keep_outliers=True)
    assert all(np.isfinite(h["val_loss"]) for h in model.history_)
    assert np.isfinite(model.joint_.x0_cov).all()
    assert np.isfinite(model.sample(train_df.head(20), n=2)[list(schema.idps)].to_numpy()).all()
