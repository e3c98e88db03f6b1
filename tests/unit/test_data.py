"""Tests for normcore.data: reading every supported format, refusing everything else with
one clear DataError, and splitting tables."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normcore import data as data_module
from normcore.data import MAX_COLUMNS, MAX_ROWS, read_table, split_table
from normcore.errors import DataError
from normcore.schema import Schema, validate_training

DEMO = Path(__file__).resolve().parents[2] / "assets" / "demo"
SIMPLE = "age,sex,site,thick\n20.5,F,A,2.5\n31,M,B,2.4\n"


def _xlsx(rows: list[list], extra_sheets: int = 0) -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "cohort"
    for row in rows:
        sheet.append(row)
    for i in range(extra_sheets):
        workbook.create_sheet(f"extra{i}").append(["ignored"])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


class _Upload(io.BytesIO):
    """Quacks like Streamlit's UploadedFile: a binary buffer with a `.name`."""

    def __init__(self, content: bytes, name: str) -> None:
        super().__init__(content)
        self.name = name


# ----------------------------------------------------------------------- real data


@pytest.mark.parametrize(("half", "rows"), [("train", 523), ("test", 530)])
def test_fcon1000_demo_half_reads_infers_and_validates(half: str, rows: int) -> None:
    """The repository's own real table: types as written, schema found, nothing to fix."""
    df = read_table(DEMO / f"fcon1000_{half}.csv")
    assert df.shape == (rows, 51)
    assert pd.api.types.is_float_dtype(df["age"])
    assert pd.api.types.is_integer_dtype(df["sex"]) and set(df["sex"]) == {0, 1}
    assert df["site"].dtype == "str" and df["sub_id"].dtype == "str"
    schema = Schema.infer(df)
    assert schema.age == "age" and schema.categorical == ("sex", "site")
    assert schema.id == "sub_id"
    assert len(schema.idps) == 47 and {"eTIV", "Left-Hippocampus"} <= set(schema.idps)
    report = validate_training(df, schema)
    assert report.ok, report.to_text()


# -------------------------------------------------------------------------- formats


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_csv_delimiter_is_sniffed(delimiter: str) -> None:
    text = SIMPLE.replace(",", delimiter)
    df = read_table(text.encode(), name="cohort.csv")
    assert list(df.columns) == ["age", "sex", "site", "thick"]
    assert df["age"].tolist() == [20.5, 31.0]
    assert df["sex"].tolist() == ["F", "M"]


def test_tsv_and_txt_use_tabs() -> None:
    tab = SIMPLE.replace(",", "\t").encode()
    assert read_table(tab, name="c.tsv").shape == (2, 4)
    assert read_table(tab, name="c.txt").shape == (2, 4)


def test_tsv_named_file_with_commas_is_still_split() -> None:
    assert read_table(SIMPLE.encode(), name="c.tsv").shape == (2, 4)


def test_trailing_separators_are_harmless() -> None:
    df = read_table(b"age,x\n1,2,\n3,4,\n", name="c.csv")
    assert df.to_dict("list") == {"age": [1, 3], "x": [2, 4]}


def test_decimal_comma_with_semicolons() -> None:
    df = read_table(b"age;thick\n20,5;2,25\n31;2,4\n", name="c.csv")
    assert df["age"].tolist() == [20.5, 31.0]
    assert df["thick"].tolist() == [2.25, 2.4]


def test_utf8_bom_is_removed_from_first_header() -> None:
    df = read_table(b"\xef\xbb\xbf" + SIMPLE.encode(), name="c.csv")
    assert df.columns[0] == "age"


def test_windows_and_latin1_encodings() -> None:
    text = "age,site,thick\n20,Zürich,2.5\n30,Malmö,2.1\n"
    for encoding in ("cp1252", "latin-1", "utf-16"):
        df = read_table(text.encode(encoding), name="c.csv")
        assert df["site"].tolist() == ["Zürich", "Malmö"], encoding


def test_path_bytes_and_file_objects_agree(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(SIMPLE)
    expected = read_table(path)
    pd.testing.assert_frame_equal(read_table(str(path)), expected)
    pd.testing.assert_frame_equal(read_table(SIMPLE.encode(), "c.csv"), expected)
    upload = _Upload(SIMPLE.encode(), "c.csv")
    upload.read()  # already consumed once, as a Streamlit rerun may leave it
    pd.testing.assert_frame_equal(read_table(upload), expected)
    with path.open("rb") as handle:
        pd.testing.assert_frame_equal(read_table(handle), expected)


def test_format_is_recognised_without_a_name() -> None:
    assert read_table(SIMPLE.encode()).shape == (2, 4)
    assert read_table(_xlsx([["age", "x"], [20, 1.0]])).shape == (1, 2)


def test_parquet_keeps_types_and_a_named_index() -> None:
    frame = pd.DataFrame(
        {"age": [20.0, 30.0], "site": ["A", None], "n": [1, 2]},
        index=pd.Index(["p1", "p2"], name="sub_id"),
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    df = read_table(_Upload(buffer.getvalue(), "c.parquet"))
    assert list(df.columns) == ["sub_id", "age", "site", "n"]
    assert df["sub_id"].tolist() == ["p1", "p2"]
    assert df["age"].tolist() == [20.0, 30.0]
    assert df["site"].isna().tolist() == [False, True]


def test_excel_first_sheet_mixed_cells_and_note_about_other_sheets() -> None:
    content = _xlsx(
        [["age", "thick", "formula", None], [20, 2.5, "=B2*2"], [30, "abc", 1], [40, None, 2]],
        extra_sheets=2,
    )
    df = read_table(content, name="cohort.xlsx")
    assert list(df.columns) == ["age", "thick", "formula"]  # empty unnamed column dropped
    assert df["age"].tolist() == [20, 30, 40]
    assert df["thick"].dtype == "str" and df["thick"].tolist()[:2] == ["2.5", "abc"]
    assert np.isnan(df["formula"].iloc[0])  # a formula never calculated has no value
    assert "3 sheets" in df.attrs["notes"][0] and "'cohort'" in df.attrs["notes"][0]


def test_excel_merged_cells_read_as_missing() -> None:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["age", "site"])
    sheet.append([20, "A"])
    sheet.append([30, "A"])
    sheet.merge_cells("B2:B3")
    buffer = io.BytesIO()
    workbook.save(buffer)
    df = read_table(buffer.getvalue(), name="m.xlsx")
    assert df["site"].iloc[0] == "A" and pd.isna(df["site"].iloc[1])


def test_missing_markers_blank_lines_and_spaces() -> None:
    text = "age , thick\n 20 , NA\n\n30,  \n40,n/a\n41,2.5\n\n\n"
    df = read_table(text.encode(), name="c.csv")
    assert list(df.columns) == ["age", "thick"]
    # the interior blank line stays a row so that row + 2 is still the spreadsheet line;
    # trailing blank lines are dropped
    assert len(df) == 5
    assert df["thick"].isna().tolist() == [True, True, True, True, False]
    assert df["age"].tolist()[2:] == [30, 40, 41]


def test_non_numeric_cell_survives_for_validation_to_name() -> None:
    rows = [f"{20 + i},F,A,{2 + i / 100}" for i in range(25)]
    rows[7] = "27,F,A,abc"
    df = read_table(("age,sex,site,thick\n" + "\n".join(rows)).encode(), name="c.csv")
    assert df["thick"].dtype == "str"
    schema = Schema.infer(df)
    assert "thick" in schema.idps
    report = validate_training(df, schema)
    (problem,) = report.errors
    assert problem.column == "thick" and problem.rows == (7,)
    assert "'abc'" in str(problem) and "spreadsheet line 9" in str(problem)


def test_infinity_text_becomes_a_number_for_validation() -> None:
    df = read_table(b"age,x\n20,inf\n30,1\n", name="c.csv")
    assert np.isinf(df["x"].iloc[0])


# ------------------------------------------------------------------- refused inputs


@pytest.mark.parametrize(
    ("content", "name", "reason"),
    [
        (b"", "c.csv", "empty"),
        (b"  \n\n ", "c.csv", "empty"),
        (b"age,thick\n", "c.csv", "no data rows"),
        (b"age,age,x\n1,2,3\n", "c.csv", "'age' (columns 1, 2)"),
        (b"age,x\n1,2\n3,4,5\n", "c.csv", "line 3 has 3 values"),
        (b"age,x\n1,2,9\n3,4\n", "c.csv", "line 2 has 3 values"),
        (b"age\n1\n2,3\n", "c.csv", "line 3 has 2 values"),
        (b'age,x\n1,"2\n', "c.csv", "quote"),
        (b"age,,x\n1,5,2\n", "c.csv", "column 2 has values but no name"),
        (b"\x00\x01\x02binary", "c.csv", "binary"),
        (bytes(range(1, 256)) * 4, "c.csv", "unreadable characters"),
        (SIMPLE.encode(), "c.pdf", "'.pdf' are not supported"),
        (_xlsx([["a"], [1]]), "c.csv", "Excel workbook"),
        (SIMPLE.encode(), "c.xlsx", "not a valid .xlsx"),
        (SIMPLE.encode(), "c.parquet", "not a valid one"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, "c.xls", "save it as .xlsx"),
        (b"PK\x03\x04garbage", "c.xlsx", "could not be read as an Excel workbook"),
        (b"PAR1garbage", "c.parquet", "could not be read as a Parquet file"),
        (_xlsx([]), "c.xlsx", "empty"),
    ],
)
def test_bad_inputs_give_one_clear_error(content: bytes, name: str, reason: str) -> None:
    with pytest.raises(DataError) as info:
        read_table(content, name=name)
    message = str(info.value)
    assert reason in message
    assert "Traceback" not in message and len(message.splitlines()) == 1


def test_missing_path_and_unsupported_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no file"):
        read_table(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="Cannot read a table from a int"):
        read_table(42)  # type: ignore[arg-type]


def test_column_limit() -> None:
    header = ",".join(f"c{i}" for i in range(MAX_COLUMNS + 1))
    with pytest.raises(DataError, match="limit is 5,000 columns"):
        read_table((header + "\n" + header.replace("c", "")).encode(), name="wide.csv")


def test_row_limit() -> None:
    text = "x\n" + "1\n" * (MAX_ROWS + 1)
    with pytest.raises(DataError, match="more than 200,000 rows"):
        read_table(text.encode(), name="long.csv")
    assert len(read_table(("x\n" + "1\n" * MAX_ROWS).encode(), name="ok.csv")) == MAX_ROWS


def test_byte_limit_for_bytes_paths_and_uploads(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data_module, "MAX_BYTES", 50)
    big = ("x\n" + "1\n" * 40).encode()
    path = tmp_path / "big.csv"
    path.write_bytes(big)
    for source in (big, path, _Upload(big, "big.csv")):
        with pytest.raises(DataError, match="larger than the limit"):
            read_table(source, name="big.csv")


# ------------------------------------------------------------- properties (hostile)

_NAMES = st.sampled_from([None, "t.csv", "t.tsv", "t.txt", "t.xlsx", "t.parquet", "t.json"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.binary(max_size=400), name=_NAMES)
def test_random_bytes_give_a_table_or_a_data_error(content: bytes, name: str | None) -> None:
    try:
        df = read_table(content, name=name)
    except DataError as exc:
        assert str(exc).strip()
    else:
        assert isinstance(df, pd.DataFrame) and len(df) > 0


_CSV_TEXT = st.text(alphabet=list("ab1.-e,;\t\n\r\" 'NAinf9é"), max_size=200)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_CSV_TEXT, encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_random_csv_text_gives_a_table_or_a_data_error(text: str, encoding: str) -> None:
    try:
        df = read_table(text.encode(encoding), name="t.csv")
    except DataError as exc:
        assert str(exc).strip()
    else:
        assert isinstance(df, pd.DataFrame) and len(df) > 0
        assert all(isinstance(c, str) and c for c in df.columns)
        assert df.columns.is_unique
        for column in df.columns:
            series = df[column]
            assert pd.api.types.is_numeric_dtype(series) or series.dtype == "str"


# --------------------------------------------------------------------------- split


def _cohort(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    sites = np.array(["A"] * (n - 30) + ["B"] * 27 + ["C"] * 3)
    return pd.DataFrame({"site": sites, "y": rng.normal(size=n)}, index=np.arange(n) + 1000)


def test_split_is_reproducible_disjoint_and_complete() -> None:
    df = _cohort()
    train, test = split_table(df, 0.25, None, seed=3)
    again = split_table(df, 0.25, None, seed=3)
    pd.testing.assert_frame_equal(train, again[0])
    pd.testing.assert_frame_equal(test, again[1])
    assert len(test) == 50 and len(train) == 150
    assert list(train.index) == list(range(150))
    assert sorted([*train["y"], *test["y"]]) == sorted(df["y"])
    other = split_table(df, 0.25, None, seed=4)[1]
    assert not np.array_equal(other["y"].to_numpy(), test["y"].to_numpy())


def test_split_stratified_keeps_proportions_and_rare_levels_in_train() -> None:
    df = _cohort()
    train, test = split_table(df, 0.2, "site", seed=0)
    counts = test["site"].value_counts()
    assert counts["A"] == 34 and counts["B"] == 5
    assert "C" not in counts  # 3 * 0.2 < 1: all three rows stay in train
    assert (train["site"] == "C").sum() == 3
    # original order is kept within each part
    assert np.all(np.diff(df.reset_index(drop=True).index[df["y"].isin(test["y"])]) > 0)


def test_split_rejects_bad_arguments() -> None:
    df = _cohort()
    with pytest.raises(ValueError, match="test_fraction"):
        split_table(df, 1.0, None, seed=0)
    with pytest.raises(DataError, match="no column 'centre'"):
        split_table(df, 0.2, "centre", seed=0)
