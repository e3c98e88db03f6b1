"""Column mapping, fan grids and cohort summaries behind the dashboard."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest

from normcore import DataError, Schema
from normcore.data import split_table
from normcore.explore import (
    UNKNOWN_LEVEL,
    ColumnMapping,
    adapted_sites,
    age_slider_range,
    apply_mapping,
    category_counts,
    conventional_sex_coding,
    curve_distance,
    describe_counts,
    extreme_rates,
    fan_grid,
    fan_points,
    guess_id_column,
    guess_mapping,
    guess_sex_coding,
    holdout_rows,
    join_covariates,
    kept_weights,
    level_text,
    model_card,
    person_profile,
    real_pair_correlation_by_age,
    sex_level_meanings,
    sparse_age_spans,
    training_idp_candidates,
    training_schema,
    truth_long,
    unseen_levels_message,
    unseen_levels_summary,
    z_matrix,
)
from normcore.first_stage import NewPersonSpread
from normcore.idp_groups import GROUP_ORDER, default_idps, group_idps, label, region_group
from normcore.reference import DeviationCalibration
from normcore.site_advice import MEASURED_COVERAGE_95, measured_calibration

SCHEMA = Schema(
    age="age", categorical=("sex", "site"), idps=("Left-Hippocampus", "eTIV"), id="sub_id"
)


def clinic_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Participant": ["p1", "p2", "p3"],
            "AGE": [30.0, 45.0, 60.0],
            "Gender": ["F", "M", "F"],
            "left_hippocampus": [3500.0, 3900.0, 3100.0],
            "eTIV": [1.4e6, 1.6e6, 1.3e6],
        }
    )


DEMO_MEANINGS = {"0": "female", "1": "male"}


@pytest.mark.parametrize(
    "values, levels, meanings, same_source, expected",
    [
        (["F", "M"], ["0", "1"], DEMO_MEANINGS, False, {"F": "0", "M": "1"}),
        (["female", "male"], ["F", "M"], None, False, {}),
        (["female", "male"], ["F", "M"], {"F": "female", "M": "male"}, False,
         {"female": "F", "male": "M"}),
        # a bare 1/2 coding is never guessed: the page asks (issue 18, item 3)
        ([1, 2, 2], ["0", "1"], DEMO_MEANINGS, False, {}),
        ([0, 1], ["0", "1"], DEMO_MEANINGS, False, {}),
        # words against levels of unknown meaning: not guessed either
        (["F", "M"], ["1", "2"], {}, False, {}),
        # the model was trained on this very column: its codes are the table's own
        ([1, 2], ["1", "2"], {}, True, {"1": "1", "2": "2"}),
    ],
)
def test_guess_sex_coding_maps_only_what_is_certain(
    values, levels, meanings, same_source, expected
):
    assert guess_sex_coding(values, levels, meanings, same_source) == expected


def test_usual_sex_convention_is_offered_for_1_2_tables_against_known_levels():
    assert conventional_sex_coding(["1", "2"], ["0", "1"], DEMO_MEANINGS) == {"1": "1", "2": "0"}
    assert conventional_sex_coding(["0", "1"], ["0", "1"], DEMO_MEANINGS) is None
    assert conventional_sex_coding(["1", "2"], ["a", "b"], {}) is None
    assert sex_level_meanings(["0", "1"], demo=True) == DEMO_MEANINGS
    assert sex_level_meanings(["0", "1"]) == {}
    assert sex_level_meanings(["F", "M"]) == {"F": "female", "M": "male"}
    assert describe_counts({"1": 230, "2": 1}) == "1: 230 people, 2: 1 person"
    assert level_text("sex", "0", DEMO_MEANINGS) == "female (0)"
    assert level_text("site", "ICBM", DEMO_MEANINGS) == "ICBM"


def test_unconfirmed_sex_codes_block_scoring_with_their_counts():
    df = clinic_table().assign(Gender=[1, 2, 2])
    m = guess_mapping(df, SCHEMA, {"sex": ["0", "1"], "site": ["A"]}, DEMO_MEANINGS)
    assert m.sex_coding == {}
    m.site_value = "A"
    with pytest.raises(DataError) as info:
        apply_mapping(df, m, SCHEMA)
    assert "1: 1 person, 2: 2 people" in str(info.value)
    m.sex_coding = {"1": "1", "2": "0"}
    assert apply_mapping(df, m, SCHEMA)["sex"].tolist() == ["1", "0", "0"]


@pytest.mark.parametrize(
    "columns, preferred, expected",
    [
        (["participant_id", "age"], None, "participant_id"),
        (["Participant", "age"], "sub_id", "Participant"),
        (["subject_id", "sub_id"], None, "sub_id"),
        (["ID", "x"], "subj", "ID"),
        (["age", "eTIV"], None, None),
    ],
)
def test_one_id_column_guess_for_dashboard_and_cli(columns, preferred, expected):
    assert guess_id_column(columns, preferred) == expected


def test_training_candidates_leave_out_qc_codes_and_constant_columns():
    df = clinic_table().assign(
        lh_EulerNumber=[-20, -30, -12], site_code=[1, 2, 1], participant_id=[5, 6, 7],
        **{"Left-WM-hypointensities": 0.0},
    )
    offered, left_out = training_idp_candidates(df, ["Participant", "AGE", "Gender"])
    assert offered == ["left_hippocampus", "eTIV"]
    assert set(left_out) == {"lh_EulerNumber", "site_code", "participant_id",
                             "Left-WM-hypointensities"}
    assert "quality-control" in left_out["lh_EulerNumber"]
    assert "(0)" in left_out["Left-WM-hypointensities"]


def test_holdout_rows_are_positions_of_split_table():
    df = pd.DataFrame({"site": list("AABBBBCCCC") * 3, "x": range(30)})
    train, held = holdout_rows(df, 0.3, "site", seed=1)
    assert sorted([*train, *held]) == list(range(30)) and 0 < len(held) < 30
    _, expected = split_table(df, 0.3, "site", 1)
    assert df.iloc[held]["x"].tolist() == expected["x"].tolist()
    train, held = holdout_rows(df, 0.0, "site", seed=1)
    assert len(train) == 30 and len(held) == 0


def test_sparse_age_spans_and_kept_weights():
    ages = np.r_[np.linspace(20, 50, 100), [70.0, 80.0]]
    spans = sparse_age_spans(ages, (20, 80), window=2.5, minimum=5)
    assert len(spans) == 1 and 50 < spans[0][0] < 53 and spans[0][1] == 80
    assert sparse_age_spans(np.linspace(20, 80, 500), (20, 80)) == []
    history = [{"val_loss": v} for v in (0.9, 0.4, 0.4, 0.5)]
    assert kept_weights(history) == 1
    assert kept_weights([{"loss": 1.0}]) is None


def test_freesurfer_measures_join_their_covariates_on_the_subject_id():
    measures = pd.DataFrame({"sub_id": ["s1", "s2", "s3"], "eTIV": [1.0, 2.0, 3.0]})
    covariates = pd.DataFrame(
        {"participant_id": ["s2", "s1", "s9"], "age": [40, 30, 50], "eTIV": [9, 9, 9]}
    )
    joined, notes = join_covariates(measures, covariates)
    assert joined["sub_id"].tolist() == ["s1", "s2"] and joined["age"].tolist() == [30, 40]
    assert joined["eTIV"].tolist() == [1.0, 2.0]  # the measures' own column wins
    assert "s3" in notes[0] and "s9" in notes[1]
    with pytest.raises(DataError, match="No subject is in both"):
        join_covariates(measures, covariates.assign(participant_id=["x", "y", "z"]))
    with pytest.raises(DataError, match="more than once"):
        join_covariates(measures, covariates.assign(participant_id=["s1", "s1", "s2"]))


def test_guess_then_apply_mapping_renames_and_recodes():
    df = clinic_table()
    m = guess_mapping(df, SCHEMA, {"sex": ["0", "1"], "site": ["A", "B"]}, DEMO_MEANINGS)
    assert (m.id, m.age, m.sex, m.site) == ("Participant", "AGE", "Gender", None)
    assert m.idps == {"Left-Hippocampus": "left_hippocampus", "eTIV": "eTIV"}
    m.site_value = "B"
    out = apply_mapping(df, m, SCHEMA)
    assert list(out.columns) == ["sub_id", "age", "sex", "site", "Left-Hippocampus", "eTIV"]
    assert out["sex"].tolist() == ["0", "1", "0"]
    assert out["site"].tolist() == ["B"] * 3
    assert out["Left-Hippocampus"].tolist() == [3500.0, 3900.0, 3100.0]


def test_apply_mapping_names_every_unmapped_role():
    m = ColumnMapping(age=None, sex="Gender", idps={"eTIV": "eTIV"})
    with pytest.raises(DataError) as info:
        apply_mapping(clinic_table(), m, SCHEMA)
    text = "\n".join(str(p) for p in info.value.problems)
    assert "column 'age'" in text and "column 'site'" in text and "'Left-Hippocampus'" in text


def test_training_schema_uses_the_mapped_columns():
    df = clinic_table()
    m = ColumnMapping(id="Participant", age="AGE", sex="Gender")
    s = training_schema(df, m, ["eTIV"])
    assert (s.age, s.categorical, s.idps, s.id) == ("AGE", ("Gender",), ("eTIV",), "Participant")
    with pytest.raises(DataError):
        training_schema(df, ColumnMapping(), ["eTIV"])


def test_fan_grid_spans_training_ages_plus_margin():
    grid = fan_grid({"age_range": [20.0, 80.0]}, SCHEMA, {"sex": "1"}, n=7, margin=0.1)
    assert grid["age"].iloc[0] == pytest.approx(14.0) and grid["age"].iloc[-1] == pytest.approx(
        86.0
    )
    assert set(grid["sex"]) == {"1"} and set(grid["site"]) == {UNKNOWN_LEVEL}


def scores_for(n_people: int, z: np.ndarray) -> pd.DataFrame:
    idps = list(SCHEMA.idps)
    return pd.DataFrame(
        {
            "row": np.repeat(np.arange(n_people), len(idps)),
            "sub_id": np.repeat([f"s{i}" for i in range(n_people)], len(idps)),
            "idp": idps * n_people,
            "value": np.arange(n_people * len(idps), dtype=float),
            "centile": 50 + 10 * z,
            "z": z,
        }
    )


def test_fan_points_keep_people_of_the_fan_sex_only():
    table = pd.DataFrame(
        {"sub_id": ["a", "b"], "age": [30.0, 40.0], "sex": ["0", "1"], "site": "A"}
    )
    scores = scores_for(2, np.array([0.0, 1.0, 2.0, 3.0]))
    pts = fan_points(scores, table, SCHEMA, {"sex": "1", "site": UNKNOWN_LEVEL}, ["eTIV"])
    assert pts.to_dict("records") == [
        {"idp": "eTIV", "age": 40.0, "value": 3.0, "centile": 80.0, "label": "b"}
    ]


def test_extreme_rates_z_matrix_and_profile():
    z = np.array([0.0, 2.5, -3.0, 0.1, 0.0, 0.0])
    scores = scores_for(3, z)
    rates = extreme_rates(scores).set_index("idp")
    assert rates.loc["eTIV", "extreme"] == 1 and rates.loc["Left-Hippocampus", "extreme"] == 1
    assert rates.loc["eTIV", "lo"] < rates.loc["eTIV", "rate"] < rates.loc["eTIV", "hi"]
    wide = z_matrix(scores, "sub_id")
    assert wide.loc["s1", "Left-Hippocampus"] == -3.0 and list(wide.columns) == list(SCHEMA.idps)
    prof = person_profile(scores, 1)
    assert prof["extreme"].tolist() == [True, False]
    with pytest.raises(ValueError):
        person_profile(scores, 9)


def test_real_pair_correlation_by_age_uses_equal_count_bins():
    rng = np.random.default_rng(0)
    x = rng.normal(size=120)
    table = pd.DataFrame({"age": np.arange(120.0), "a": x, "b": x + 0.01 * rng.normal(size=120)})
    out = real_pair_correlation_by_age(table, "age", "a", "b", bins=4)
    assert out["n"].tolist() == [30] * 4 and (out["r"] > 0.95).all()


def test_truth_long_matches_centiles_layout():
    grid = pd.DataFrame({"age": [20.0, 30.0]})
    values = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2)
    long = truth_long(grid, ["a", "b", "c"], [0.1, 0.9], values)
    row = long[(long["age"] == 30.0) & (long["idp"] == "b") & (long["quantile"] == 0.9)]
    assert row["value"].item() == values[1, 1, 1]


def test_idp_groups_read_freesurfer_names():
    assert region_group("Left-Hippocampus") == "Subcortical volumes"
    assert region_group("BrainSegVolNotVent") == "Global volumes"
    assert region_group("Left-Lateral-Ventricle") == "Ventricles / CSF"
    assert region_group("3rd-Ventricle") == "Ventricles / CSF"
    assert region_group("Left-Inf-Lat-Vent") == "Ventricles / CSF"
    assert region_group("Left-VentralDC") == "Subcortical volumes"
    assert region_group("lh_MeanThickness_thickness") == "Cortical thickness (left)"
    assert region_group("rh_G&S_frontomargin_thickness") == "Cortical thickness (right)"
    assert region_group("avg_en") == "Other"
    groups = group_idps(["avg_en", "eTIV", "CSF"])
    assert list(groups) == [g for g in GROUP_ORDER if g in groups]
    assert label("lh_G_front_sup_thickness") == "lh G front sup"
    assert default_idps(["x", "eTIV", "Left-Hippocampus"], 2) == ["Left-Hippocampus", "eTIV"]


def test_curve_distance_matches_rows_by_key_not_position():
    grid = pd.DataFrame({"age": [20.0, 30.0]})
    truth = truth_long(grid, ["a", "b"], [0.5], np.array([[[1.0], [2.0]], [[3.0], [4.0]]]))
    learned = truth.assign(value=truth["value"] + [0.5, -0.5, 1.0, 0.0]).iloc[::-1]
    assert curve_distance(learned, truth) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        curve_distance(learned.iloc[1:], truth)


@pytest.mark.parametrize(
    "age_range, expected",
    [((18.4, 79.6), (18.0, 80.0, 30.0)), ((40.2, 60.0), (40.0, 60.0, 40.2))],
)
def test_age_slider_range_covers_training_ages_in_whole_years(age_range, expected):
    assert age_slider_range(age_range) == pytest.approx(expected)


def test_category_counts_read_codes_as_the_model_does():
    assert category_counts(pd.Series([1, 1.0, "1", " 2 "])) == {"1": 3, "2": 1}


def test_unseen_levels_summary_and_message_name_the_site_and_what_to_do():
    table = pd.DataFrame(
        {"sub_id": ["a", "b", "c"], "sex": ["0", "1", "0"], "site": ["S0", "X", "X"]}
    )
    scores = scores_for(3, np.zeros(6)).assign(unseen_levels=np.repeat(["", "site", "site"], 2))
    summary = unseen_levels_summary(scores, table)
    assert summary == {"site": {"X": 2}}
    text = unseen_levels_message(summary, 10)
    assert "2 people have" in text and "site 'X' (2)" in text
    assert "'unknown site' level" in text and "Adapt to my site" in text and "10 per sex" in text
    assert unseen_levels_summary(scores.assign(unseen_levels=""), table) == {}
    both = {"sex": {"9": 1}, "site": {"X": 2}}
    assert unseen_levels_message(both, 10).startswith("Some people have")


def test_model_card_lists_adapted_sites_with_their_controls():
    records = [
        {"column": "site", "level": "CLINIC", "n_controls": 12},
        {"column": "site", "level": "OTHER", "n_controls": 30},
        {"column": "site", "level": "CLINIC", "n_controls": 25},
    ]
    assert adapted_sites(records) == "CLINIC (25 controls), OTHER (30 controls)"
    assert adapted_sites([]) == "none"


def test_model_card_says_how_draws_were_matched_and_widened_for_new_people(fitted):
    model = copy.copy(fitted)
    model.joint_ = dataclasses.replace(fitted.joint_, spread=NewPersonSpread(1.02, 6.6))
    assert model_card(model)["new-person spread"] == (
        "x1.02, Student-t tails, 7 degrees of freedom (5-fold cross-validation of the first stage)"
    )
    model.joint_ = dataclasses.replace(fitted.joint_, spread=NewPersonSpread(1.0, None))
    assert "normal tails" in model_card(model)["new-person spread"]
    small = NewPersonSpread(1.0, None, site_term=2.0, level_counts=((8, 100),))
    model.joint_ = dataclasses.replace(fitted.joint_, spread=small)
    assert model_card(model)["new-person spread"].endswith("up to x1.12 for the smallest")
    matrix = np.array([[0.97, 0.02], [0.02, 1.04]])
    model.joint_ = dataclasses.replace(fitted.joint_, moment_map=(matrix, np.zeros(2)))
    assert model_card(model)["moment matching"].startswith("x0.97 to x1.04")


def test_model_card_says_how_the_deviation_centile_was_recalibrated(fitted):
    model = copy.copy(fitted)
    model.deviation_calibration_ = DeviationCalibration()
    assert model_card(model)["deviation calibration"].startswith("none")
    model.deviation_calibration_ = DeviationCalibration(0.05, 1.21)
    assert model_card(model)["deviation calibration"] == (
        "shift +0.05, spread x1.21 (out-of-fold training people, corrected by validation people)"
    )
    model.deviation_calibration_ = DeviationCalibration(0.05, 1.21, -0.01, 0.0, (20.0, 80.0))
    assert model_card(model)["deviation calibration"] == (
        "shift +0.05, spread x1.21 at age 50; over ages 20-80 the shift changes by -0.60 "
        "and the spread x1.00 (out-of-fold training people, corrected by validation people)"
    )


def test_measured_calibration_quotes_the_nearest_tested_number_of_controls():
    lo, hi = MEASURED_COVERAGE_95[10]
    assert f"from 10 controls had {lo:.0f}-{hi:.0f} %" in measured_calibration(14)
    assert "from 5 controls" in measured_calibration(3)  # fewer than any tested: the smallest
