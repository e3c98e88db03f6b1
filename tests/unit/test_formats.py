"""One registry of file formats: every registered suffix reads, nothing else is offered."""

from __future__ import annotations

import io

import openpyxl
import pandas as pd
import pytest

from normcore.data import read_table
from normcore.errors import DataError
from normcore.formats import FORMATS, format_of, kind_of_content, upload_types
from normcore.stream import streamable

TABLE = pd.DataFrame({"age": [20.5, 31.0], "site": ["A", "B"]})


def _content(kind: str, delimiter: str | None) -> bytes:
    if kind == "parquet":
        buffer = io.BytesIO()
        TABLE.to_parquet(buffer, index=False)
        return buffer.getvalue()
    if kind == "excel":
        workbook = openpyxl.Workbook()
        for row in [list(TABLE.columns), *TABLE.values.tolist()]:
            workbook.active.append(row)
        buffer = io.BytesIO()
        workbook.save(buffer)
        return buffer.getvalue()
    return TABLE.to_csv(index=False, sep=delimiter or ",").encode()


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_every_registered_suffix_is_read(suffix: str) -> None:
    found = FORMATS[suffix]
    content = _content(found.kind, found.delimiter)
    assert kind_of_content(content) == found.kind
    df = read_table(content, name=f"t{suffix.upper()}")
    pd.testing.assert_frame_equal(df, TABLE, check_dtype=False)
    assert streamable(f"t{suffix}") == (found.kind != "excel")


def test_uploaders_are_offered_exactly_the_registry() -> None:
    assert upload_types() == [s.lstrip(".") for s in FORMATS]
    assert "xls" not in upload_types()
    assert format_of("a.XLSX").kind == "excel" and format_of("a.xls") is None
    assert format_of(None) is None and format_of("noext") is None


def test_unregistered_suffixes_are_refused_with_the_reason() -> None:
    with pytest.raises(DataError, match="save it as .xlsx"):
        read_table(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, name="old.xls")
    with pytest.raises(DataError, match="'.json' are not supported"):
        read_table(b'{"age": 1}', name="t.json")
