"""Values no real person has: refused in training and adaptation, flagged and never
scored as normal at scoring; ages outside a person's own site; sex codes never guessed.

Scoring tests use the bundled demo model (fcon1000, 47 FreeSurfer IDPs) and its held-out
people, as a clinic would meet them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from normcore.cli import main
from normcore.demo import IDPS, SCHEMA, TEST_PATH, TRAIN_PATH
from normcore.errors import DataError
from normcore.model import NormativeModel
from normcore.plausibility import (
    OUTLIER_Z,
    numeric_failures,
    positive_by_nature,
    robust_z,
    site_age_ranges,
)
from normcore.schema import Schema, parse_coding, recode, validate_training

THICKNESS = "lh_MeanThickness_thickness"


@pytest.fixture(scope="module")
def demo(demo_model) -> NormativeModel:
    return NormativeModel.load(demo_model, device="cpu")


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return pd.read_csv(TRAIN_PATH)


@pytest.fixture(scope="module")
def people() -> pd.DataFrame:
    """Held-out demo people aged inside their own site's training ages."""
    return pd.read_csv(TEST_PATH).iloc[[0, 1, 2, 3, 4]].reset_index(drop=True)


def _cell(scores: pd.DataFrame, row: int, idp: str) -> pd.Series:
    return scores[(scores["row"] == row) & (scores["idp"] == idp)].iloc[0]


# ------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    "name",
    ["Left-Hippocampus", "Left-Thalamus-Proper", "eTIV", "CortexVol", "3rd-Ventricle",
     "lh_precentral_thickness", "rh_G&S_frontomargin_area", "CC_Anterior", "Brain-Stem"],
)  # fmt: skip
def test_volumes_thicknesses_and_areas_are_positive_by_nature(name):
    assert positive_by_nature(name)


@pytest.mark.parametrize(
    "name",
    ["Left-WM-hypointensities", "non-WM-hypointensities", "Left-vessel", "5th-Ventricle",
     "lh_precentral_meancurv", "lh_precentral_foldind", "avg_en", "idp_000", "age"],
)  # fmt: skip
def test_measures_that_may_be_zero_or_signed_are_not(name):
    assert not positive_by_nature(name)


# --------------------------------------------------------------------- training


def test_no_real_person_of_the_demo_tables_is_refused(train):
    """The default thresholds leave all 1,053 real fcon1000 people alone: the most extreme
    (Left-Hippocampus 1,153 mm3 beside 3,318 on the right) stays under OUTLIER_Z."""
    for table in (train, pd.read_csv(TEST_PATH)):
        report = validate_training(table, SCHEMA)
        assert report.ok, report.to_text()
        assert not [p for p in report.warnings if p.column in IDPS], report.to_text()
    worst = max(np.nanmax(np.abs(robust_z(train[c].to_numpy(float)))) for c in IDPS)
    assert 11 < worst < OUTLIER_Z


def test_a_hippocampus_times_1000_is_refused_by_row_and_column(train):
    bad = train.copy()
    bad.loc[17, "Left-Hippocampus"] *= 1000
    report = validate_training(bad, SCHEMA)
    [error] = report.errors
    assert error.column == "Left-Hippocampus" and error.rows == (17,)
    assert "far from everyone else's" in error.message and "keep" in error.message
    with pytest.raises(DataError, match="Left-Hippocampus"):
        NormativeModel().fit(bad, SCHEMA)


def test_keep_outliers_trains_on_them_with_a_warning(train):
    bad = train.copy()
    bad.loc[17, "Left-Hippocampus"] *= 1000
    report = validate_training(bad, SCHEMA, keep_outliers=True)
    assert report.ok
    kept = [(p.column, p.rows) for p in report.warnings if p.column in IDPS]
    assert kept == [("Left-Hippocampus", (17,))]


def test_a_thickness_times_10_is_refused(train):
    bad = train.copy()
    bad.loc[3, THICKNESS] *= 10
    assert [(p.column, p.rows) for p in validate_training(bad, SCHEMA).errors] == [
        (THICKNESS, (3,))
    ]


def test_zero_and_negative_volumes_are_refused(train):
    bad = train.copy()
    bad.loc[[4, 9], "Left-Lateral-Ventricle"] = [0.0, -12.0]
    [error] = validate_training(bad, SCHEMA).errors
    assert error.column == "Left-Lateral-Ventricle" and error.rows == (4, 9)
    assert "positive by nature" in error.message


def test_a_1e308_cell_is_refused_even_when_outliers_are_kept(train):
    bad = train.copy()
    bad.loc[5, "eTIV"] = 1e308
    for keep in (False, True):
        errors = validate_training(bad, SCHEMA, keep_outliers=keep).errors
        assert [(p.column, p.rows) for p in errors] == [("eTIV", (5,))]
        assert "too large to compute with" in errors[0].message


def test_an_all_empty_etiv_column_is_named_never_dropped_silently(train):
    table = train.assign(eTIV=np.nan)
    inferred = Schema.infer(table.drop(columns="sub_id"), id="")
    assert "eTIV" not in inferred.idps
    left_out = [p for p in validate_training(table, inferred).warnings if p.column == "eTIV"]
    assert left_out and "empty in every row" in left_out[0].message
    chosen = validate_training(table, SCHEMA).errors
    assert [p.column for p in chosen] == ["eTIV"] and "empty" in chosen[0].message


def test_a_numeric_failure_names_the_most_extreme_value():
    values = np.column_stack([np.linspace(1.0, 2.0, 30), np.linspace(5.0, 6.0, 30)])
    values[7, 1] = 5e9
    with pytest.raises(DataError) as raised, numeric_failures(values, ["a", "b"]):
        np.linalg.cholesky(-np.eye(2))
    assert "numeric problem" in str(raised.value)
    assert (raised.value.problems[0].column, raised.value.problems[0].rows) == ("b", (7,))


def test_other_errors_pass_through_numeric_failures():
    with pytest.raises(KeyError), numeric_failures(np.ones((3, 1)), ["a"]):
        raise KeyError("not numeric")


# ---------------------------------------------------------------------- scoring


def test_a_zero_thalamus_is_flagged_and_gets_no_centile(demo, people):
    table = people.assign(**{"Left-Thalamus-Proper": 0.0})
    scores = demo.score(table)
    cells = scores[scores["idp"] == "Left-Thalamus-Proper"]
    assert cells["implausible"].all() and cells["centile"].isna().all()
    assert cells["z"].isna().all() and not cells["beyond_reference"].any()
    others = scores[scores["idp"] != "Left-Thalamus-Proper"]
    assert not others["implausible"].any() and others["centile"].notna().all()
    [warning] = [p for p in demo.check(table).warnings if p.column == "Left-Thalamus-Proper"]
    assert "0 for all 5 people" in warning.message
    deviation = demo.deviation(table)
    assert deviation["implausible"].all() and deviation["deviation_centile"].isna().all()


def test_a_constant_idp_is_flagged(demo, people):
    table = people.assign(**{"Right-Putamen": 4321.0})
    cells = demo.score(table).query("idp == 'Right-Putamen'")
    assert cells["implausible"].all() and cells["centile"].isna().all()


def test_a_negative_thickness_is_flagged_not_centile_100(demo, people):
    table = people.copy()
    table.loc[1, "lh_G_cuneus_thickness"] = -1.0
    cell = _cell(demo.score(table), 1, "lh_G_cuneus_thickness")
    assert cell["implausible"] and np.isnan(cell["centile"])


def test_a_value_100_sd_out_at_age_120_is_beyond_the_reference(demo, people, train):
    table = people.iloc[[0]].assign(age=120.0).reset_index(drop=True)
    for sign in (1, -1):
        table.loc[0, THICKNESS] = train[THICKNESS].mean() + sign * 100 * train[THICKNESS].std()
        cell = _cell(demo.score(table), 0, THICKNESS)
        assert cell["beyond_reference"] or cell["implausible"], cell


def test_every_idp_20_sd_out_is_flagged_at_any_age(demo, train):
    """Whatever the age, a value 100 training SDs out (the issue's attack) is beyond the
    reference or implausible: never an ordinary centile. (20 SDs above is z ~ 3 for a
    ventricle modelled on the log scale at the oldest ages, where it is wide.)"""
    base = pd.read_csv(TEST_PATH).iloc[[0]]
    rows = []
    for idp in IDPS:
        for age in (120.0, 40.0, 3.0):
            for sign in (1, -1):
                row = base.assign(age=age)
                row[idp] = train[idp].mean() + sign * 100 * train[idp].std()
                rows.append((row, idp))
    table = pd.concat([r for r, _ in rows], ignore_index=True)
    scores = demo.score(table).set_index(["row", "idp"])
    flagged = [
        scores.loc[(i, idp), "beyond_reference"] or scores.loc[(i, idp), "implausible"]
        for i, (_, idp) in enumerate(rows)
    ]
    assert all(flagged)


def test_ordinary_held_out_people_are_not_implausible(demo):
    scores = demo.score(pd.read_csv(TEST_PATH))
    assert not scores["implausible"].any()


def test_an_age_outside_the_own_sites_training_ages_is_flagged(demo, people):
    lo, hi = demo.training_summary["level_age_ranges"]["site"]["Beijing_Zang"]
    assert (lo, hi) == (18.0, 26.0)
    table = people.iloc[[0, 1]].assign(site="Beijing_Zang", age=[79.0, 22.0])
    flags = demo.score(table).groupby("row")["out_of_site_age_range"].first()
    assert flags.tolist() == [True, False]
    assert demo.deviation(table)["out_of_site_age_range"].tolist() == [True, False]
    [warning] = [p for p in demo.check(table).warnings if "Beijing_Zang" in p.message]
    assert warning.rows == (0,) and "18 to 26" in warning.message


def test_site_age_ranges_widen_with_adaptations():
    training = {"level_age_ranges": {"site": {"A": [20.0, 30.0]}}}
    adaptations = [
        {"column": "site", "level": "A", "age_range": [18.0, 25.0]},
        {"column": "site", "level": "B", "age_range": [40.0, 50.0]},
        {"column": "site", "level": "C"},
    ]
    assert site_age_ranges(training, adaptations, "site") == {
        "A": (18.0, 30.0), "B": (40.0, 50.0)
    }


# -------------------------------------------------------------------- adaptation


def _fs7_controls(people: pd.DataFrame) -> pd.DataFrame:
    """Controls of a new site from FreeSurfer 7: the old thalamus columns hold 0 for
    everyone, the values sit under FreeSurfer 7's name."""
    controls = pd.concat([people] * 2, ignore_index=True).assign(site="NewScanner")
    controls["age"] = np.linspace(20, 40, len(controls))
    controls["Left-Thalamus"] = controls["Left-Thalamus-Proper"]
    controls["Left-Thalamus-Proper"] = 0.0
    return controls


def test_adaptation_refuses_an_all_zero_thalamus_naming_the_renamed_column(demo, people):
    with pytest.raises(DataError) as raised:
        demo.adapt(_fs7_controls(people), steps=1)
    text = str(raised.value)
    assert "Left-Thalamus-Proper" in text and "0 for all 10 people" in text
    assert "'Left-Thalamus'" in text and "FreeSurfer 7" in text


def test_adaptation_refuses_a_constant_column_without_a_renamed_one(demo, people):
    controls = _fs7_controls(people).drop(columns="Left-Thalamus")
    controls["Left-Thalamus-Proper"] = 7000.0
    with pytest.raises(DataError, match="7000 for all 10 people"):
        demo.adapt(controls, steps=1)


def test_cli_adapt_refuses_an_all_zero_thalamus(demo_model, people, tmp_path, capsys):
    table = tmp_path / "controls.csv"
    _fs7_controls(people).to_csv(table, index=False)
    out = tmp_path / "adapted.normcore"
    code = main(["adapt", str(demo_model), str(table), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "Left-Thalamus-Proper" in err and "'Left-Thalamus'" in err
    assert "Traceback" not in err


def test_cli_score_flags_a_zero_idp(demo_model, people, tmp_path, capsys):
    table, out = tmp_path / "t.csv", tmp_path / "scores.csv"
    people.assign(**{"Left-Thalamus-Proper": 0.0}).to_csv(table, index=False)
    assert main(["score", str(demo_model), str(table), "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "warning: column 'Left-Thalamus-Proper'" in err and "0 for all 5 people" in err
    scores = pd.read_csv(out)
    cells = scores[scores["idp"] == "Left-Thalamus-Proper"]
    assert cells["implausible"].all() and cells["centile"].isna().all()


# ------------------------------------------------------------------ sex coding


def test_parse_coding():
    assert parse_coding("1=male, 2 = female") == {"1": "male", "2": "female"}
    assert parse_coding("1.0=M") == {"1": "M"}
    for bad in ("1male", "1=", "=m", "1=m,1=f"):
        with pytest.raises(DataError, match="coding"):
            parse_coding(bad)


def test_recode_never_guesses():
    table = pd.DataFrame({"sex": [1, 2, 2, np.nan]})
    meanings = {"0": "female", "1": "male"}
    out = recode(table, "sex", {"1": "male", "2": "female"}, ["0", "1"], meanings)
    assert out["sex"].tolist()[:3] == ["1", "0", "0"] and pd.isna(out["sex"].iloc[3])
    with pytest.raises(DataError, match=r"'2' \(2 people\).*'0' \(female\), '1' \(male\)"):
        recode(table, "sex", None, ["0", "1"], meanings)
    with pytest.raises(DataError, match=r"not in the coding given: '2' \(2 people\)"):
        recode(table, "sex", {"1": "male"}, ["0", "1"], meanings)
    with pytest.raises(DataError, match="not one of the model's levels"):
        recode(table, "sex", {"1": "man", "2": "female"}, ["0", "1"], meanings)


def test_cli_sex_coding_scores_a_1_2_table_as_the_models_own_coding(
    demo_model, people, tmp_path, capsys
):
    own, recoded = tmp_path / "own.csv", tmp_path / "12.csv"
    people.to_csv(own, index=False)
    people.assign(sex=people["sex"].map({0: 2, 1: 1})).to_csv(recoded, index=False)
    outs = [tmp_path / f"{name}.out.csv" for name in ("own", "words", "levels")]
    base = ["--device", "cpu"]
    assert main(["score", str(demo_model), str(own), "--out", str(outs[0]), *base]) == 0
    assert main(["score", str(demo_model), str(recoded), "--out", str(outs[1]), *base,
                 "--sex-coding", "1=male,2=female"]) == 0  # fmt: skip
    assert main(["score", str(demo_model), str(recoded), "--out", str(outs[2]), *base,
                 "--coding", "sex:1=1,2=0"]) == 0  # fmt: skip
    streamed = tmp_path / "streamed.out.csv"
    assert main(["score", str(demo_model), str(recoded), "--out", str(streamed), *base,
                 "--sex-coding", "1=male,2=female", "--chunk-rows", "2"]) == 0  # fmt: skip
    expected = pd.read_csv(outs[0])
    for out in [*outs[1:], streamed]:
        pd.testing.assert_frame_equal(pd.read_csv(out), expected)


def test_cli_refuses_sex_codes_it_cannot_read(demo_model, people, tmp_path, capsys):
    table, out = tmp_path / "12.csv", tmp_path / "scores.csv"
    people.assign(sex=[1, 2, 2, 1, 2]).to_csv(table, index=False)
    assert main(["score", str(demo_model), str(table), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "'2' (3 people)" in err and "'1' (2 people)" in err
    assert "'0' (female), '1' (male)" in err and "--sex-coding" in err
    assert not out.exists() and "Traceback" not in err
    code = main(["score", str(demo_model), str(table), "--out", str(out), "--device", "cpu",
                 "--sex-coding", "2=female"])  # fmt: skip
    assert code == 2 and "not in the coding given: '1' (2 people)" in capsys.readouterr().err
    code = main(["score", str(demo_model), str(table), "--out", str(out), "--device", "cpu",
                 "--coding", "handedness:1=left"])  # fmt: skip
    assert code == 2 and "categorical covariates (sex, site)" in capsys.readouterr().err


# ------------------------------------------------------------------ CLI fit


def test_cli_fit_refuses_an_outlier_unless_kept_and_names_an_empty_column(
    train_df, tmp_path, capsys, monkeypatch, tiny_settings
):
    import functools

    import normcore.commands

    tiny = {k: v for k, v in tiny_settings.items() if k != "max_epochs"}
    monkeypatch.setattr(
        normcore.commands,
        "NormativeModel",
        functools.partial(normcore.commands.NormativeModel, **tiny),
    )
    bad = train_df.copy()
    bad.loc[11, "idp_000"] *= 1000
    table, out = tmp_path / "train.csv", tmp_path / "m.normcore"
    bad.assign(eTIV=np.nan).to_csv(table, index=False)
    assert main(["fit", str(table), "--out", str(out), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "column 'idp_000', row 11 (spreadsheet line 13)" in err and "--keep-outliers" in err
    assert "warning: column 'eTIV': this column is empty in every row" in err
    assert not out.exists() and "Traceback" not in err
    assert main(["fit", str(table), "--out", str(out), "--epochs", "2", "--keep-outliers"]) == 0
    err = capsys.readouterr().err
    assert "warning: column 'idp_000', row 11" in err and "kept, as asked" in err
    assert out.exists()
