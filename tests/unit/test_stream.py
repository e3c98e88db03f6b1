"""Chunked scoring writes exactly what whole-table scoring writes, and names file rows."""

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from normcore import data as data_module
from normcore.cli import main
from normcore.data import read_table
from normcore.errors import DataError
from normcore.export import write_csv
from normcore.stream import count_rows, iter_chunks, score_file
from normcore.synthetic import simulate

N = 2_500


@pytest.fixture(scope="module")
def cohort(spec) -> pd.DataFrame:
    return simulate(spec, N, seed=3)


def _write(df: pd.DataFrame, path, kind: str) -> None:
    if kind == "parquet":
        df.to_parquet(path, index=False)
    elif kind == "semicolon":
        df.to_csv(path, sep=";", decimal=",", index=False)
    else:
        df.to_csv(path, index=False)


@pytest.mark.parametrize("kind", ["csv", "semicolon", "parquet"])
def test_streamed_scores_are_byte_identical(fitted, cohort, tmp_path, kind):
    source = tmp_path / ("cohort.parquet" if kind == "parquet" else "cohort.csv")
    _write(cohort, source, kind)
    whole, streamed = tmp_path / "whole.csv", tmp_path / "streamed.csv"
    write_csv(fitted.score(read_table(source)), whole)
    seen = []
    summary = score_file(
        fitted, source, streamed, chunk_rows=700, progress=lambda d, t: seen.append(d)
    )
    assert summary.rows == N and summary.chunks == 4
    assert seen == [700, 1400, 2100, 2500]
    assert streamed.read_bytes() == whole.read_bytes()


def test_chunks_are_converted_like_read_table(cohort, tmp_path):
    source = tmp_path / "c.csv"
    cohort.to_csv(source, index=False)
    chunks = list(iter_chunks(source, 1000))
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    pd.testing.assert_frame_equal(
        pd.concat(chunks, ignore_index=True), read_table(source), check_dtype=True
    )
    assert count_rows(source) == N


def test_errors_name_rows_of_the_whole_file_and_nothing_is_written(fitted, cohort, tmp_path):
    bad = cohort.astype({"age": object})
    bad.loc[[10, 1500], "age"] = "abc"
    source, out = tmp_path / "bad.csv", tmp_path / "out.csv"
    bad.to_csv(source, index=False)
    with pytest.raises(DataError) as err:
        score_file(fitted, source, out, chunk_rows=700)
    rows = {r for p in err.value.problems for r in p.rows}
    assert rows == {10, 1500}
    assert "row 1500 (spreadsheet line 1502)" in str(err.value)
    assert not out.exists() and not (tmp_path / "out.csv.partial").exists()


def test_warnings_name_rows_of_the_whole_file(fitted, cohort, tmp_path):
    odd = cohort.copy()
    odd.loc[2100, "age"] = 119.0
    odd.loc[2200, "subject_id"] = odd.loc[5, "subject_id"]
    source = tmp_path / "odd.csv"
    odd.to_csv(source, index=False)
    summary = score_file(fitted, source, tmp_path / "o.csv", chunk_rows=700)
    by_column = {}
    for p in summary.warnings:
        by_column.setdefault(p.column, set()).update(p.rows)
    assert 2100 in by_column["age"] and 2200 in by_column["subject_id"]


def test_blank_line_inside_the_file_is_an_error_naming_it(fitted, cohort, tmp_path):
    source = tmp_path / "blank.csv"
    text = cohort.head(30).to_csv(index=False).splitlines()
    text.insert(11, "")  # data row 10 is blank
    source.write_text("\n".join(text) + "\n\n")
    with pytest.raises(DataError, match="row 10 "):
        score_file(fitted, source, tmp_path / "o.csv", chunk_rows=10)


def test_cli_streams_large_files_with_the_same_output(fitted, cohort, tmp_path, capsys):
    model, source = tmp_path / "m.normcore", tmp_path / "cohort.csv"
    fitted.save(model)
    cohort.to_csv(source, index=False)
    whole, streamed = tmp_path / "whole.csv", tmp_path / "streamed.csv"
    assert main(["score", str(model), str(source), "--out", str(whole)]) == 0
    assert "chunks" not in capsys.readouterr().err
    args = ["score", str(model), str(source), "--out", str(streamed), "--chunk-rows", "1000"]
    args += ["--device", "cpu"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "in 3 chunks" in err and "scoring: 2,500" in err
    assert streamed.read_bytes() == whole.read_bytes()


# ------------------------------------------------------ the in-memory reader's rules


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_duplicated_idp_column_is_refused_as_read_table_refuses_it(fitted, cohort, tmp_path, kind):
    """The streamer used to score the first of two columns with one name."""
    twice = cohort.copy()
    twice.insert(len(twice.columns), "copy", twice["idp_000"] + 1.0)
    source = tmp_path / ("dup.parquet" if kind == "parquet" else "dup.csv")
    if kind == "parquet":
        names = [*cohort.columns, "idp_000"]
        table = pa.Table.from_pandas(twice, preserve_index=False).rename_columns(names)
        pq.write_table(table, source)
    else:
        text = twice.to_csv(index=False).replace(",copy\n", ",idp_000\n", 1)
        source.write_text(text)
    with pytest.raises(DataError) as in_memory:
        read_table(source)
    with pytest.raises(DataError) as streamed:
        score_file(fitted, source, tmp_path / "o.csv", chunk_rows=700)
    assert str(streamed.value) == str(in_memory.value)
    assert "'idp_000' (columns" in str(streamed.value)
    assert not (tmp_path / "o.csv").exists()


def test_parquet_dictionary_bomb_is_refused_per_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "MAX_UNPACKED_BYTES", 1 << 20)
    value = pa.array(["s" * 10_000]).dictionary_encode().dictionary
    site = pa.DictionaryArray.from_arrays(pa.array([0] * 500, pa.int32()), value)
    source = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"age": pa.array(range(500), pa.float64()), "site": site}), source)
    with pytest.raises(DataError, match=r"^'bomb.parquet': its values decode to 2 MB"):
        list(iter_chunks(source, 200))  # one batch: 200 rows x 10 kB


def test_streamed_output_cannot_run_as_a_formula(fitted, cohort, tmp_path):
    hostile = cohort.head(1500).copy()
    hostile["subject_id"] = "=HYPERLINK(\"http://evil.example\")" + hostile["subject_id"]
    source, whole, streamed = tmp_path / "h.csv", tmp_path / "whole.csv", tmp_path / "s.csv"
    hostile.to_csv(source, index=False)
    write_csv(fitted.score(read_table(source)), whole)
    score_file(fitted, source, streamed, chunk_rows=700)
    assert streamed.read_bytes() == whole.read_bytes()
    ids = pd.read_csv(streamed, dtype=str)["subject_id"]
    assert ids.str.startswith("'=HYPERLINK").all()
