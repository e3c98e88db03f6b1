"""CSV written by normcore opens in a spreadsheet as data: formula-leading text is quoted,
numbers stay numbers (issue 20, item 5)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
import pytest

from normcore.export import neutralise_formulas, safe_cell, to_csv_bytes, write_csv


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=1+1", "'=1+1"),
        ('=HYPERLINK("http://evil.example","x")', '\'=HYPERLINK("http://evil.example","x")'),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-3.5", "-3.5"),  # a negative number written as text is not a formula
        ("+2e3", "+2e3"),
        ("sub-01", "sub-01"),
        ("Left-Hippocampus", "Left-Hippocampus"),
        ("", ""),
    ],
)
def test_text_cells(cell: str, written: str) -> None:
    assert safe_cell(cell) == written


def test_numbers_missing_values_and_other_types_are_untouched() -> None:
    for value in (-1.5, -3, np.float64(-2.0), None, np.nan, True):
        assert safe_cell(value) is value


def test_every_text_column_and_name_is_neutralised_and_numbers_stay_numbers() -> None:
    df = pd.DataFrame({
        "=id": pd.Series(["=a", "b", None], dtype="str"),
        "-z": [-1.5, 2.0, np.nan],
        "site": pd.Categorical(["@s", "-1", "@s"]),
        "mixed": pd.Series(["+x", 3, None], dtype=object),
        "flag": [True, False, True],
    })
    rows = list(csv.reader(io.StringIO(to_csv_bytes(df).decode())))
    assert rows[0] == ["'=id", "'-z", "site", "mixed", "flag"]
    assert rows[1] == ["'=a", "-1.5", "'@s", "'+x", "True"]
    assert rows[2] == ["b", "2.0", "-1", "3", "False"]
    assert rows[3] == ["", "", "'@s", "", "True"]
    assert list(df.columns)[0] == "=id" and df["=id"].iloc[0] == "=a"  # input unchanged


def test_write_csv_matches_the_bytes_and_appends_without_header(tmp_path) -> None:
    df = pd.DataFrame({"id": ["=x", "y"], "v": [-1.0, 2.0]})
    path = tmp_path / "out.csv"
    write_csv(df, path)
    assert path.read_bytes() == to_csv_bytes(df)
    with path.open("a", encoding="utf-8", newline="") as handle:
        write_csv(df, handle, header=False)
    assert path.read_text().splitlines() == ["id,v", "'=x,-1.0", "y,2.0", "'=x,-1.0", "y,2.0"]


def test_neutralising_keeps_numeric_columns_numeric() -> None:
    df = pd.DataFrame({"a": [-1, 2], "b": ["-x", "y"]})
    out = neutralise_formulas(df)
    assert out["a"].dtype == df["a"].dtype and out["b"].tolist() == ["'-x", "y"]
