"""Tests for normcore.schema: column roles, and one test per bad input the validators must
name (column, rows, spreadsheet lines, what to do)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normcore.errors import DataError
from normcore.schema import (
    MIN_TRAINING_ROWS,
    Problem,
    Schema,
    ValidationReport,
    coerce_categories,
    numeric_columns,
    validate_scoring,
    validate_training,
)

SCHEMA = Schema(age="age", categorical=("sex", "site"), idps=("thick", "vol"), id="sub_id")
LEVELS = {"sex": ["F", "M"], "site": ["A", "B"]}


def _cohort(n: int = 30) -> pd.DataFrame:
    """A small valid training table; tests break one thing at a time."""
    rng = np.random.default_rng(1)
    return pd.DataFrame({
        "sub_id": [f"s{i:03d}" for i in range(n)],
        "age": np.linspace(20.0, 80.0, n),
        "sex": ["F", "M"] * (n // 2) + ["F"] * (n % 2),
        "site": ["A"] * (n // 2) + ["B"] * (n - n // 2),
        "thick": rng.normal(2.5, 0.1, n),
        "vol": rng.normal(4000.0, 300.0, n),
    })


def _with(df: pd.DataFrame, column: str, rows: list[int], value: object) -> pd.DataFrame:
    out = df.copy()
    if not pd.api.types.is_object_dtype(out[column]) and isinstance(value, str):
        out[column] = out[column].astype(object)
    for row in rows:
        out.loc[row, column] = value
    return out


def _only_error(report: ValidationReport) -> Problem:
    assert len(report.errors) == 1, report.to_text()
    return report.errors[0]


# -------------------------------------------------------------------------- Problem


def test_problem_text_names_column_rows_and_spreadsheet_lines() -> None:
    problem = Problem("error", "age", (3, 17), "values that are not numbers: 'abc'.")
    assert str(problem) == (
        "column 'age', rows 3, 17 (spreadsheet lines 5, 19): values that are not numbers: 'abc'."
    )
    single = Problem("warning", "age", (0,), "x")
    assert str(single) == "column 'age', row 0 (spreadsheet line 2): x"
    assert str(Problem("error", None, (), "too few rows")) == "too few rows"


def test_problem_text_lists_ten_rows_then_counts_the_rest() -> None:
    text = str(Problem("error", "v", tuple(range(25)), "missing values."))
    assert "rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 15 more" in text
    assert "spreadsheet lines 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 and 15 more" in text


# --------------------------------------------------------------------------- Schema


def test_schema_round_trips_through_json() -> None:
    schema = Schema(age="Age", categorical=["site"], idps=["a", "b"], id=None)  # type: ignore[arg-type]
    assert schema.categorical == ("site",) and schema.covariates == ("Age", "site")
    restored = Schema.from_dict(json.loads(json.dumps(schema.to_dict())))
    assert restored == schema and hash(restored) == hash(schema)


@pytest.mark.parametrize(
    "bad", [{}, {"age": 3}, {"age": "age", "idps": "abc"}, {"age": "age", "idps": [1]}, None]
)
def test_schema_from_dict_rejects_malformed(bad: object) -> None:
    with pytest.raises(DataError):
        Schema.from_dict(bad)  # type: ignore[arg-type]


def test_infer_defaults() -> None:
    df = _cohort().assign(const=0.0, notes="ok")
    schema = Schema.infer(df)
    assert schema == SCHEMA  # constant 'const' and text 'notes' are not IDPs
    assert Schema.infer(df.drop(columns=["sub_id", "site"]).assign(participant_id="p")).id == (
        "participant_id"
    )


def test_infer_explicit_arguments_win() -> None:
    schema = Schema.infer(_cohort(), categorical=["site"], idps=["vol"], id=None)
    assert schema.categorical == ("site",) and schema.idps == ("vol",) and schema.id == "sub_id"
    assert "sex" not in schema.covariates
    assert Schema.infer(_cohort(), id="").id is None
    assert "sub_id" not in Schema.infer(_cohort(), id="").idps  # text, never an IDP


def test_infer_keeps_an_idp_with_one_typo_so_validation_can_name_it() -> None:
    df = _with(_cohort(), "thick", [4], "abc").astype({"thick": "str"})
    assert "thick" in Schema.infer(df).idps


def test_infer_missing_age_suggests_close_names() -> None:
    df = _cohort().rename(columns={"age": "Age_years"})
    with pytest.raises(DataError) as info:
        Schema.infer(df)
    assert "'age'" in str(info.value) and "'Age_years'" in str(info.value)
    assert info.value.problems[0].column == "age"


def test_infer_without_idps_and_with_overlap_fails() -> None:
    with pytest.raises(DataError, match="No brain measures"):
        Schema.infer(_cohort()[["sub_id", "age", "sex", "site"]])
    with pytest.raises(DataError, match="both a covariate"):
        Schema.infer(_cohort(), idps=["age", "vol"])


# ------------------------------------------------------------------ training checks


def test_valid_training_table_is_ok() -> None:
    report = validate_training(_cohort(), SCHEMA)
    assert report.ok and report.problems == []
    assert report.to_text() == "No problems found."
    report.raise_for_errors()


def test_missing_column_is_named_with_a_suggestion() -> None:
    df = _cohort().rename(columns={"thick": "Thick"})
    problem = _only_error(validate_training(df, SCHEMA))
    assert problem.column == "thick"
    assert "not in the table" in problem.message and "'Thick'" in problem.message


def test_missing_column_without_close_name_says_what_to_do() -> None:
    problem = _only_error(validate_training(_cohort().drop(columns="vol"), SCHEMA))
    assert problem.column == "vol" and "Add it to the table" in problem.message


def test_non_numeric_cells_name_values_and_rows() -> None:
    df = _with(_with(_cohort(), "vol", [3, 17], "abc"), "vol", [20], "n.a.")
    problem = _only_error(validate_training(df, SCHEMA))
    assert problem.column == "vol" and problem.rows == (3, 17, 20)
    assert "'abc', 'n.a.'" in problem.message
    assert "spreadsheet lines 5, 19, 22" in str(problem)


def test_decimal_comma_gets_a_hint() -> None:
    df = _with(_cohort(), "age", [2], "35,5")
    problem = _only_error(validate_training(df, SCHEMA))
    assert problem.column == "age" and "decimal mark" in problem.message


def test_missing_values_name_rows() -> None:
    df = _with(_with(_cohort(), "thick", [0, 5], np.nan), "thick", [6], "  NA ")
    problem = _only_error(validate_training(df, SCHEMA))
    assert problem.column == "thick" and problem.rows == (0, 5, 6)
    assert "missing values" in problem.message and "Fill them in" in problem.message


def test_infinite_values_name_rows() -> None:
    df = _with(_cohort(), "vol", [8], np.inf)
    problem = _only_error(validate_training(df, SCHEMA))
    assert problem.column == "vol" and problem.rows == (8,) and "infinite" in problem.message


def test_constant_idp_is_an_error() -> None:
    df = _cohort().assign(vol=1234.0)
    problem = _only_error(validate_training(df, SCHEMA))
    assert problem.column == "vol" and "same" in problem.message and "1234" in problem.message


def test_duplicate_ids_name_every_repeated_row() -> None:
    df = _with(_cohort(), "sub_id", [9], "s002")
    problem = _only_error(validate_training(df, SCHEMA))
    assert problem.column == "sub_id" and problem.rows == (2, 9)
    assert "'s002'" in problem.message


def test_categorical_missing_values_are_an_error() -> None:
    df = _with(_cohort(), "site", [4, 11], None)
    problem = _only_error(validate_training(df, SCHEMA))
    assert problem.column == "site" and problem.rows == (4, 11)


def test_too_few_rows() -> None:
    problem = _only_error(validate_training(_cohort(MIN_TRAINING_ROWS - 1), SCHEMA))
    assert problem.column is None and str(MIN_TRAINING_ROWS) in problem.message
    assert validate_training(_cohort(MIN_TRAINING_ROWS), SCHEMA).ok


@pytest.mark.parametrize("age", [-1.0, 150.0, 400.0])
def test_negative_or_absurd_age_is_an_error(age: float) -> None:
    problem = _only_error(validate_training(_with(_cohort(), "age", [7], age), SCHEMA))
    assert problem.column == "age" and problem.rows == (7,) and "years" in problem.message


def test_rare_level_and_missing_id_are_warnings() -> None:
    df = _with(_with(_cohort(), "site", [0, 1], "C"), "sub_id", [5], None)
    report = validate_training(df, SCHEMA)
    assert report.ok
    by_column = {w.column: w for w in report.warnings}
    assert by_column["site"].rows == (0, 1) and "'C'" in by_column["site"].message
    assert by_column["sub_id"].rows == (5,)


def test_duplicated_column_names_are_an_error() -> None:
    df = _cohort()
    df.columns = ["sub_id", "age", "sex", "site", "vol", "vol"]
    report = validate_training(df, SCHEMA)
    assert any("more than once" in p.message for p in report.errors)


def test_raise_for_errors_carries_all_errors() -> None:
    df = _with(_with(_cohort(), "age", [1], "x"), "vol", [2], np.nan)
    report = validate_training(df, SCHEMA)
    with pytest.raises(DataError) as info:
        report.raise_for_errors()
    assert len(info.value.problems) == 2
    assert "2 problems" in str(info.value) and "'x'" in str(info.value)
    assert report.to_text().count("Error: ") == 2


# ------------------------------------------------------------------- scoring checks


def test_valid_scoring_table_is_ok_and_needs_no_minimum_size() -> None:
    report = validate_scoring(_cohort().head(1), SCHEMA, (18.0, 90.0), LEVELS)
    assert report.ok and not report.problems


def test_unknown_category_is_a_warning_naming_rows() -> None:
    df = _with(_cohort(), "site", [3, 4], "Z")
    report = validate_scoring(df, SCHEMA, (18.0, 90.0), LEVELS)
    assert report.ok
    (warning,) = report.warnings
    assert warning.column == "site" and warning.rows == (3, 4)
    assert "'Z'" in warning.message and "'unknown' level" in warning.message


def test_numeric_levels_match_whatever_their_spelling() -> None:
    df = _cohort().assign(sex=[1.0, 0] * 15)
    report = validate_scoring(df, SCHEMA, (18.0, 90.0), {"sex": [0, "1"], "site": ["A", "B"]})
    assert report.ok and not report.problems


def test_age_outside_training_range_is_a_warning_naming_rows() -> None:
    report = validate_scoring(_cohort(), SCHEMA, (25.0, 75.0), LEVELS)
    assert report.ok
    (warning,) = report.warnings
    assert warning.column == "age" and warning.rows == (0, 1, 2, 27, 28, 29)
    assert "25 to 75" in warning.message and "extrapolating" in warning.message


def test_scoring_age_errors_are_not_range_warnings() -> None:
    df = _with(_cohort(), "age", [0], -5.0)
    report = validate_scoring(df, SCHEMA, (20.0, 80.0), LEVELS)
    assert _only_error(report).rows == (0,) and not report.warnings


def test_scoring_missing_columns() -> None:
    df = _cohort().drop(columns=["vol", "site", "sub_id"])
    report = validate_scoring(df, SCHEMA, (18.0, 90.0), LEVELS)
    assert {p.column for p in report.errors} == {"site"}
    assert "the model needs it" in report.errors[0].message
    # A missing IDP is information: a model with conditioning masks imputes its bands.
    assert [w.column for w in report.warnings] == [None, "sub_id"]
    assert "'vol'" in report.warnings[0].message


def test_scoring_cell_checks_and_duplicate_ids() -> None:
    df = _with(_with(_cohort(), "thick", [2], "abc"), "sub_id", [4], "s000")
    report = validate_scoring(df, SCHEMA, (18.0, 90.0), LEVELS)
    assert _only_error(report).rows == (2,)
    assert report.warnings[0].column == "sub_id" and report.warnings[0].rows == (0, 4)


def test_scoring_empty_table() -> None:
    report = validate_scoring(_cohort().head(0), SCHEMA, (18.0, 90.0), LEVELS)
    assert "no rows" in _only_error(report).message


# -------------------------------------------------------------------------- helpers


def test_coerce_categories() -> None:
    series = pd.Series([1, 1.0, "1", " 1 ", "1.0", 2.5, " F ", None, "NA", True], dtype=object)
    out = coerce_categories(series)
    assert out.iloc[:7].tolist() == ["1", "1", "1", "1", "1", "2.5", "F"]
    assert out.iloc[7:9].isna().all() and out.iloc[9] == "True"
    assert out.dtype == "str"
    assert coerce_categories(pd.Series([0, 1], index=[5, 6])).index.tolist() == [5, 6]


@pytest.mark.parametrize(
    "series",
    [
        pd.Series([2.0, 1.0, np.nan, 2.5, 1.0]),
        pd.Series([" 1 ", "1.0", None, "F", "NA", "F", "2"], dtype="str"),
        pd.Series([3, 1, 3, 2], index=[9, 4, 7, 1]),
        pd.Series([True, False, True]),
    ],
)
def test_coerce_categories_of_one_type_labels_each_cell_as_a_mixed_column_would(series) -> None:
    """A typed column is labelled once per distinct value; every cell must still get the
    label the cell-by-cell reading of the same values gives."""
    out = coerce_categories(series)
    cell_by_cell = coerce_categories(series.astype(object))
    pd.testing.assert_series_equal(out, cell_by_cell)


def test_numeric_columns() -> None:
    df = pd.DataFrame({
        "num": [1.0, 2.0, 3.0],
        "int": [1, 2, 3],
        "text_numbers": ["1", "2.5", " 3"],
        "one_typo": ["1", "abc", "3"],
        "words": ["a", "b", "3"],
        "flag": [True, False, True],
        "empty": pd.Series([None, None, None], dtype="str"),
    })
    assert numeric_columns(df) == ["num", "int", "text_numbers", "one_typo"]


@settings(max_examples=100, deadline=None)
@given(
    cells=st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
            st.none(), st.integers(-10**6, 10**6),
        ),
        min_size=0, max_size=60,
    )
)
def test_validators_never_raise_on_hostile_cells(cells: list) -> None:
    n = len(cells) // 3
    df = pd.DataFrame({
        "age": pd.Series(cells[:n], dtype=object),
        "site": pd.Series(cells[n:2 * n], dtype=object),
        "vol": pd.Series(cells[2 * n:3 * n], dtype=object),
    })
    schema = Schema(age="age", categorical=("site",), idps=("vol",))
    for report in (
        validate_training(df, schema),
        validate_scoring(df, schema, (20.0, 80.0), {"site": ["A"]}),
    ):
        assert all(isinstance(str(p), str) for p in report.problems)
        assert all(0 <= r < max(n, 1) for p in report.problems for r in p.rows)
