"""Hostile tables, end to end: reader -> schema -> training validation, and the Data page.

tests/unit/test_data.py already fuzzes `read_table` alone (random bytes, random CSV text)
and checks each refusal message. Here the whole intake is the unit: whatever the bytes,
`read_table` + `Schema.infer` + `validate_training` give a usable table or one DataError,
never another exception and never a hang (each test has a pytest-timeout). The size
limits are tried at and just past the edge, and the dashboard is shown hostile files.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normcore import data as data_module
from normcore.data import MAX_COLUMNS, MAX_ROWS, read_table
from normcore.errors import DataError
from normcore.schema import Schema, ValidationReport, validate_training

# --------------------------------------------------------------------------- helpers


def intake(content: bytes, name: str | None) -> tuple[pd.DataFrame, ValidationReport]:
    """What the dashboard does with an upload before training: read, infer, validate."""
    df = read_table(content, name=name)
    schema = Schema.infer(df)
    return df, validate_training(df, schema)


def assert_table_or_one_error(content: bytes, name: str | None) -> DataError | None:
    """The property: a DataFrame plus a report, or one DataError with a short message."""
    try:
        df, report = intake(content, name)
    except DataError as err:
        text = str(err)
        assert text.strip() and "Traceback" not in text
        assert len(text.splitlines()[0]) < 400, text[:500]
        return err
    assert isinstance(df, pd.DataFrame) and len(df) > 0
    assert all(isinstance(str(p), str) for p in report.problems)
    assert all(0 <= r < len(df) for p in report.problems for r in p.rows)
    return None


def xlsx(rows: list[list], extra_sheets: int = 0, merge: str | None = None) -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    if merge:
        sheet.merge_cells(merge)
    for i in range(extra_sheets):
        workbook.create_sheet(f"s{i}").append(["age", "other"])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def cohort(n: int, seed: int = 0, n_idps: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    covariates = pd.DataFrame({
        "sub_id": [f"p{i:06d}" for i in range(n)],
        "age": rng.uniform(20, 80, n).round(2),
        "sex": rng.choice(["F", "M"], n),
        "site": rng.choice(["A", "B", "C"], n),
    })
    idps = pd.DataFrame(
        rng.normal(2.5, 0.3, (n, n_idps)).round(4), columns=[f"idp_{j:04d}" for j in range(n_idps)]
    )
    return pd.concat([covariates, idps], axis=1)


def encode(df: pd.DataFrame, fmt: str, delimiter: str = ",", encoding: str = "utf-8") -> bytes:
    if fmt == "xlsx":
        return xlsx([list(df.columns), *df.astype(object).values.tolist()])
    if fmt == "parquet":
        buffer = io.BytesIO()
        df.to_parquet(buffer, index=False)
        return buffer.getvalue()
    return df.to_csv(index=False, sep=delimiter).encode(encoding, errors="replace")


# -------------------------------------------------------------- properties (hostile)

_EXT = st.sampled_from([None, "x.csv", "x.tsv", "x.txt", "x.xlsx", "x.parquet"])


@pytest.mark.timeout(120)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.binary(min_size=1, max_size=2000), name=_EXT)
def test_random_bytes_through_the_whole_intake(content: bytes, name: str | None) -> None:
    assert_table_or_one_error(content, name)


@pytest.mark.timeout(120)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content=st.binary(min_size=1, max_size=300),
    prefix=st.sampled_from([b"PK\x03\x04", b"PAR1", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
                            b"\xff\xfe", b"\xef\xbb\xbf"]),
    name=_EXT,
)
def test_magic_numbers_followed_by_garbage(content: bytes, prefix: bytes, name) -> None:
    """Zip, Parquet, OLE and BOM headers send the reader down its binary paths."""
    assert_table_or_one_error(prefix + content, name)


_CELL = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, -3.0, 0.0, 121.0, 1e6]),
    st.integers(-(2**63), 2**63 - 1),
    st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=6),  # Excel-storable
    st.sampled_from(["inf", "-Infinity", "1e999", "NaN", "#N/A", "=1/0", "3,5", " ", "é\u200b"]),
    st.none(),
)


@pytest.mark.timeout(180)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    n=st.integers(1, 30),
    fmt=st.sampled_from(["csv", "csv", "xlsx", "parquet"]),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "utf-16"]),
)
def test_tables_with_hostile_cells(data, n: int, fmt: str, delimiter: str, encoding: str) -> None:
    """A plausible table whose cells are infinities, huge/negative ages, text, blanks."""
    df = cohort(n, seed=n)
    for column in ("age", "idp_0000"):
        cells = data.draw(st.lists(_CELL, min_size=1, max_size=n))
        rows = data.draw(st.lists(st.integers(0, n - 1), min_size=len(cells), max_size=len(cells)))
        values = df[column].astype(object)
        for row, cell in zip(rows, cells):
            values.iloc[row] = cell
        df[column] = values
    if fmt == "parquet":
        df = df.astype({"age": str, "idp_0000": str})  # Parquet needs one type per column
    assert_table_or_one_error(encode(df, fmt, delimiter, encoding), f"t.{fmt}")


# ------------------------------------------------------------ explicit hostile tables


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        # a colon-separated export: one column; the age check names what it found
        (b"age:sex:thick\n20:F:2.5\n30:M:2.4\n", "c.csv", "Did you mean 'age:sex:thick'"),
        # a semicolon file named .tsv: sniffed, then judged on its cells
        (cohort(25).to_csv(index=False, sep=";").encode(), "c.tsv", None),
        (b"age\tthick\n", "c.tsv", "no data rows"),
        (b"sub_id,age,Age,age\n1,2,3,4\n", "c.csv", "'age' (columns 2, 4)"),
        (b"\xff\xfe" + "age,x\n1,2\n".encode("utf-16-le")[:-1], "c.csv", "UTF-16"),
        # UTF-32 (its BOM starts like UTF-16's): read as such, not as NUL-riddled names
        (("sub_id,age,site,x\n" + "".join(f"p{i},20,Zürich,{i}\n" for i in range(25)))
         .encode("utf-32"), "c.csv", None),
        (b"\xff\xfe\x00\x00" + "age,x\n1,2\n".encode("utf-16-le"), "c.csv", "UTF-32"),
        # neither UTF-8 nor cp1252 (0x81 is unassigned there): Latin-1, then judged
        ("âge,x\n".encode("cp1252") + b"20,1\x81\n" + b"30,2\n" * 200, "c.csv", "'âge'"),
    ],
)
def test_explicit_bad_tables(content: bytes, name: str, expected: str | None) -> None:
    err = assert_table_or_one_error(content, name)
    if expected is None:
        assert err is None
    else:
        assert err is not None and expected in str(err), str(err)


@pytest.mark.timeout(30)
def test_infinities_and_absurd_ages_are_named_by_validation() -> None:
    df = cohort(30)
    text = df.to_csv(index=False).splitlines()
    # rows 0..4: inf age, huge age, negative age, age beyond float range, IDP -inf
    text[1] = "p0,inf,F,A,2.5,2.5,2.5"
    text[2] = "p1,1e308,F,A,2.5,2.5,2.5"
    text[3] = "p2,-4,F,A,2.5,2.5,2.5"
    text[4] = "p3,1e999,F,A,2.5,2.5,2.5"
    text[5] = "p4,40,F,A,-inf,2.5,2.5"
    _, report = intake("\n".join(text).encode(), "c.csv")
    assert not report.ok
    by_column = {(p.column, p.rows) for p in report.errors}
    flagged_age_rows = {r for c, rows in by_column if c == "age" for r in rows}
    assert {0, 1, 2, 3} <= flagged_age_rows, report.to_text()
    assert any(c == "idp_0000" and 4 in rows for c, rows in by_column), report.to_text()
    with pytest.raises(DataError) as info:
        report.raise_for_errors()
    assert "age" in str(info.value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("rows", "extra", "merge", "expected"),
    [
        # several sheets: first one read, the note says so
        ([["age", "sex", "x"], *[[20 + i, "F", i / 3] for i in range(25)]], 2, None, "3 sheets"),
        # formulas are never evaluated: no cached value -> missing, named by validation
        ([["age", "x"], *[[f"=20+{i}", i / 3] for i in range(25)]], 0, None, "missing"),
        # merged cells: only the top-left keeps its value, the rest are missing
        ([["age", "site", "x"], *[[20 + i, "A", i / 3] for i in range(25)]], 0, "B2:B10",
         "missing"),
        # an empty first sheet with data on the second
        ([], 1, None, "empty"),
        # duplicated header names inside a workbook
        ([["age", "x", "x"], [20, 1, 2]], 0, None, "'x' (columns 2, 3)"),
    ],
)
def test_excel_workbooks(rows, extra: int, merge: str | None, expected: str) -> None:
    content = xlsx(rows, extra_sheets=extra, merge=merge)
    try:
        df, report = intake(content, "w.xlsx")
    except DataError as err:
        assert expected in str(err), str(err)
    else:
        text = " ".join(df.attrs.get("notes", [])) + report.to_text()
        assert expected in text, text


@pytest.mark.timeout(30)
def test_parquet_duplicate_names_and_header_only() -> None:
    dup = pa.table([pa.array([20.0, 30.0]), pa.array([1.0, 2.0]), pa.array([3.0, 4.0])],
                   names=["age", "x", "x"])
    with pytest.raises(DataError, match="'x'"):
        read_table(parquet(dup), name="d.parquet")
    empty = pa.table({"age": pa.array([], pa.float64()), "x": pa.array([], pa.float64())})
    with pytest.raises(DataError, match="no data rows"):
        read_table(parquet(empty), name="e.parquet")


# ----------------------------------------------------------------------- size limits


@pytest.mark.timeout(300)
def test_100k_rows_read_and_validate() -> None:
    content = cohort(100_000, n_idps=5).to_csv(index=False).encode()
    df, report = intake(content, "big.csv")
    assert len(df) == 100_000 and report.ok, report.to_text()


@pytest.mark.timeout(300)
def test_5000_columns_accepted_5001_refused() -> None:
    n_rows = 25
    base = cohort(n_rows, n_idps=MAX_COLUMNS - 4)
    content = base.to_csv(index=False).encode()
    df, report = intake(content, "wide.csv")
    assert df.shape == (n_rows, MAX_COLUMNS) and report.ok, report.to_text()[:500]
    wider = pd.concat([base, pd.DataFrame({"one_more": np.ones(n_rows)})], axis=1)
    for fmt in ("csv", "parquet"):
        with pytest.raises(DataError, match="limit is 5,000 columns"):
            read_table(encode(wider, fmt), name=f"wider.{fmt}")


@pytest.mark.timeout(60)
def test_excel_with_too_many_columns_is_refused() -> None:
    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet()
    sheet.append([f"c{i}" for i in range(MAX_COLUMNS + 1)])
    sheet.append(list(range(MAX_COLUMNS + 1)))
    buffer = io.BytesIO()
    workbook.save(buffer)
    with pytest.raises(DataError, match="limit is 5,000 columns"):
        read_table(buffer.getvalue(), name="wide.xlsx")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", ["xlsx", "parquet", "csv"])
def test_row_limit_in_every_format(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """MAX_ROWS (200,000) is enforced for every reader; a small limit keeps this fast.
    The real limit for CSV is tried in tests/unit/test_data.py."""
    monkeypatch.setattr(data_module, "MAX_ROWS", 300)
    at_limit = encode(cohort(300), fmt)
    assert len(read_table(at_limit, name=f"ok.{fmt}")) == 300
    with pytest.raises(DataError, match="more than 300 rows"):
        read_table(encode(cohort(301), fmt), name=f"long.{fmt}")


def test_limits_are_what_the_readme_states() -> None:
    assert (MAX_ROWS, MAX_COLUMNS, data_module.MAX_BYTES) == (200_000, 5_000, 200 * 2**20)
    config = (Path(__file__).resolve().parents[2] / ".streamlit" / "config.toml").read_text()
    upload_mb = next(
        float(line.split("=")[1]) for line in config.splitlines()
        if line.strip().startswith("maxUploadSize")
    )
    assert math.isclose(upload_mb, data_module.MAX_BYTES / 2**20)


# ----------------------------------------------------------------------- dashboard

HOSTILE_UPLOADS = [
    ("noise.csv", bytes(np.random.default_rng(1).integers(1, 256, 3000, dtype=np.uint8))),
    ("fake.xlsx", b"PK\x03\x04" + b"\x00" * 200),
    ("header.csv", b"age,sex,site,thick\n"),
    ("dupes.csv", b"age,age,x\n1,2,3\n"),
    ("ragged.csv", b"age,x\n1,2\n3,4,5,6\n"),
    ("wide.csv", (",".join(f"c{i}" for i in range(MAX_COLUMNS + 1)) + "\n"
                  + ",".join("1" * (MAX_COLUMNS + 1)) + "\n").encode()),
]


@pytest.mark.timeout(120)
def test_data_page_shows_one_error_for_each_hostile_file(app) -> None:
    at = app("pages/data.py")
    for name, content in HOSTILE_UPLOADS:
        at.file_uploader(key="data_upload").set_value((name, content, "text/csv"))
        at.run()
        assert not at.exception, (name, [e.value for e in at.exception])
        assert len(at.error) == 1 and "could not be read" in at.error[0].value, name
        assert "table" not in at.session_state, name  # a bad file never replaces state


@pytest.mark.timeout(180)
def test_readable_but_hostile_values_are_refused_for_training_and_scoring(app, tiny_model):
    """inf and absurd ages read fine; the Model page names them and disables Train, and
    the Data page's check against a model names them too, with no exception anywhere."""
    df = cohort(40).rename(columns={"sub_id": "subject_id", "idp_0000": "idp_000",
                                    "idp_0001": "idp_001", "idp_0002": "idp_002"})
    df["site"] = df["site"].map({"A": "S0", "B": "S1", "C": "S0"})
    df["age"] = df["age"].astype(object)
    df.loc[0, "age"], df.loc[1, "age"], df.loc[2, "idp_001"] = "inf", -7, float("-inf")
    at = app("pages/model.py")
    at.file_uploader(key="bundle_upload").set_value(
        ("tiny.normcore", tiny_model.to_bytes(), "application/octet-stream")
    )
    at.run()
    at.switch_page("pages/data.py").run()
    at.file_uploader(key="data_upload").set_value(
        ("hostile.csv", df.to_csv(index=False).encode(), "text/csv")
    )
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    # The page escapes user text for markdown; read it as the user sees it.
    text = "\n".join(e.value for e in at.error).replace("\\", "")
    assert "cannot be scored" in text and "'age'" in text, text
    at.switch_page("pages/cohort.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.error
    at.switch_page("pages/model.py").run()
    assert not at.exception, [e.value for e in at.exception]
    text = "\n".join(e.value for e in at.error).replace("\\", "")
    assert "Fix these before training" in text and "'age'" in text, text
    assert at.button(key="train_start").disabled
