"""Compressed tables that claim or decode to far more than they weigh are refused before
they are decompressed, with a message naming the file and the limit (issue 20, items 3-4).

Workbooks are built by hand with zipfile so that each part, its declared size and the
sheet's <dimension> say exactly what the attack needs. Memory is measured, never time:
tracemalloc for Python-level allocations in this process; for Parquet (Arrow allocates
outside Python's allocator) the peak resident size of a child process that reads the file.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normcore import data as data_module
from normcore.data import MAX_CELL_CHARS, read_table
from normcore.errors import DataError

REPO = Path(__file__).resolve().parents[2]
MB = 1024 * 1024
MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
RELS = "http://schemas.openxmlformats.org/package/2006/relationships"
DOC_RELS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
CONTENT_TYPES = """<?xml version="1.0" encoding="UTF-8"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
<Default Extension="xml" ContentType="application/xml"/>
<Override PartName="/xl/workbook.xml"
 ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>
<Override PartName="/xl/worksheets/sheet1.xml"
 ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>
<Override PartName="/xl/sharedStrings.xml"
 ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>
</Types>"""
PACKAGE_RELS = f"""<?xml version="1.0" encoding="UTF-8"?>
<Relationships xmlns="{RELS}"><Relationship Id="rId1" Target="xl/workbook.xml"
 Type="{DOC_RELS}/officeDocument"/></Relationships>"""
WORKBOOK = f"""<?xml version="1.0" encoding="UTF-8"?>
<workbook xmlns="{MAIN}" xmlns:r="{DOC_RELS}"><sheets>
<sheet name="cohort" sheetId="1" r:id="rId1"/></sheets></workbook>"""
WORKBOOK_RELS = f"""<?xml version="1.0" encoding="UTF-8"?>
<Relationships xmlns="{RELS}">
<Relationship Id="rId1" Type="{DOC_RELS}/worksheet" Target="worksheets/sheet1.xml"/>
<Relationship Id="rId2" Type="{DOC_RELS}/sharedStrings" Target="sharedStrings.xml"/>
</Relationships>"""


def sheet_xml(rows: list[str], dimension: str | None = None) -> str:
    dim = f'<dimension ref="{dimension}"/>' if dimension else ""
    return f'<worksheet xmlns="{MAIN}">{dim}<sheetData>{"".join(rows)}</sheetData></worksheet>'


def row(number: int, *cells: str) -> str:
    return f'<row r="{number}">{"".join(cells)}</row>'


def num(ref: str, value: float) -> str:
    return f'<c r="{ref}"><v>{value}</v></c>'


def shared(ref: str, index: int) -> str:
    return f'<c r="{ref}" t="s"><v>{index}</v></c>'


def strings_xml(strings: list[str], doctype: str = "") -> str:
    items = "".join(f"<si><t>{s}</t></si>" for s in strings)
    return f'{doctype}<sst xmlns="{MAIN}" count="{len(strings)}">{items}</sst>'


def workbook(sheet: str, strings: str | None = None, extra: int = 0) -> bytes:
    """A minimal .xlsx: the parts openpyxl needs, written with deflate."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", CONTENT_TYPES)
        archive.writestr("_rels/.rels", PACKAGE_RELS)
        archive.writestr("xl/workbook.xml", WORKBOOK)
        archive.writestr("xl/_rels/workbook.xml.rels", WORKBOOK_RELS)
        archive.writestr("xl/worksheets/sheet1.xml", sheet)
        archive.writestr("xl/sharedStrings.xml", strings or strings_xml(["age", "x"]))
        for i in range(extra):
            archive.writestr(f"docProps/extra{i}.xml", "<x/>")
    return buffer.getvalue()


def declare_size(content: bytes, part: str, size: int) -> bytes:
    """The workbook with `part`'s declared uncompressed size rewritten (both headers)."""
    out = bytearray(content)
    name = part.encode()
    central = out.find(b"PK\x01\x02" + b"\x00" * 0, 0)
    while central >= 0:
        length = struct.unpack_from("<H", out, central + 28)[0]
        if bytes(out[central + 46 : central + 46 + length]) == name:
            struct.pack_into("<I", out, central + 24, size)
            local = struct.unpack_from("<I", out, central + 42)[0]
            struct.pack_into("<I", out, local + 22, size)
            return bytes(out)
        central = out.find(b"PK\x01\x02", central + 4)
    raise AssertionError(f"no part {part}")


def header_and_rows(n: int, dimension: str | None = None) -> str:
    rows = [row(1, shared("A1", 0), shared("B1", 1))]
    rows += [row(i, num(f"A{i}", 20 + i), num(f"B{i}", i / 4)) for i in range(2, n + 2)]
    return sheet_xml(rows, dimension)


def refused(content: bytes, name: str, *expected: str) -> str:
    with pytest.raises(DataError) as info:
        read_table(content, name=name)
    message = str(info.value)
    assert message.startswith(f"'{name}'"), message
    for text in expected:
        assert text in message, message
    assert len(message.splitlines()) == 1
    return message


def python_peak(function, *args) -> int:
    tracemalloc.start()
    try:
        function(*args)
    except DataError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# ----------------------------------------------------------------------------- xlsx


def test_hand_built_workbook_reads() -> None:
    df = read_table(workbook(header_and_rows(3)), name="w.xlsx")
    assert list(df.columns) == ["age", "x"] and df["age"].tolist() == [22, 23, 24]


def test_stale_dimension_loses_no_rows() -> None:
    """The dimension says 10 data rows; there are 20, and all 20 are read."""
    df = read_table(workbook(header_and_rows(20, dimension="A1:B11")), name="stale.xlsx")
    assert len(df) == 20 and df["age"].tolist() == list(range(22, 42))


def test_huge_claimed_dimension_allocates_nothing_for_it() -> None:
    """10,001 x 16,384 claimed, 3 rows real: read as 3 rows, without padding to the claim."""
    content = workbook(header_and_rows(3, dimension="A1:XFD10001"))
    assert len(content) < 5_000
    assert len(read_table(content, name="claim.xlsx")) == 3
    assert python_peak(read_table, content, "claim.xlsx") < 20 * MB  # the claim is 1.3 GB


def test_cells_beyond_the_column_limit_are_refused_row_by_row() -> None:
    """Every row holds a value at XFD (column 16,384): refused at the first, not after
    10,001 rows padded to 16,384 cells (1.3 GB) as before."""
    rows = [row(i, num(f"A{i}", i), num(f"XFD{i}", 1)) for i in range(1, 10_002)]
    content = workbook(sheet_xml(rows, dimension="A1:XFD10001"))
    assert len(content) < 200_000
    refused(content, "wide.xlsx", "column XFD (16,384)", "the limit is 5,000 columns")
    assert python_peak(read_table, content, "wide.xlsx") < 20 * MB


def test_rows_beyond_the_row_limit_are_refused_whatever_the_dimension(monkeypatch) -> None:
    monkeypatch.setattr(data_module, "MAX_ROWS", 50)
    content = workbook(header_and_rows(51, dimension="A1:B5"))
    refused(content, "long.xlsx", "more than 50 rows")
    assert len(read_table(workbook(header_and_rows(50, "A1:B5")), name="ok.xlsx")) == 50


def test_declared_huge_shared_strings_are_refused_before_reading() -> None:
    """A shared-strings part declaring 500 MB (the real limit for parts read whole is
    100 MB): refused from its declared size after reading its first bytes."""
    content = declare_size(workbook(header_and_rows(2)), "xl/sharedStrings.xml", 500 * MB)
    refused(content, "sst.xlsx", "'xl/sharedStrings.xml' unpacks to 500 MB", "at most 100 MB")


def test_declared_total_beyond_the_unpacked_limit_is_refused() -> None:
    content = declare_size(workbook(header_and_rows(2)), "xl/worksheets/sheet1.xml", 2**32 - 1)
    refused(content, "total.xlsx", "unpack to 4,096 MB", "the limit is 1,024 MB")


def test_one_long_shared_string_is_refused_as_it_is_read() -> None:
    """A 1 MB workbook whose one shared string is 50 MB: within the part limit, refused
    by its length while streaming, without materialising it (the issue's 1 GB string
    behaves the same, it is refused earlier by its declared size)."""
    content = workbook(header_and_rows(2), strings_xml(["age", "x" * (50 * MB)]))
    assert len(content) < 1 * MB
    refused(content, "s.xlsx", "a shared string in 'xl/sharedStrings.xml'", "32,767 characters")
    assert python_peak(read_table, content, "s.xlsx") < 10 * MB
    ok = workbook(header_and_rows(2), strings_xml(["age", "x" * MAX_CELL_CHARS]))
    assert list(read_table(ok, name="ok.xlsx").columns) == ["age", "x" * MAX_CELL_CHARS]


def test_one_long_inline_cell_and_one_long_tag_are_refused() -> None:
    cell = f'<c r="C2" t="inlineStr"><is><t>{"y" * (MAX_CELL_CHARS + 1)}</t></is></c>'
    rows = [row(1, shared("A1", 0), shared("B1", 1)), row(2, num("A2", 20), cell)]
    refused(workbook(sheet_xml(rows)), "c.xlsx", "a cell in 'xl/worksheets/sheet1.xml'")
    tag = f'<c r="A2" foo="{"z" * (2 * MB)}"><v>1</v></c>'
    rows = [row(1, shared("A1", 0), shared("B1", 1)), row(2, tag)]
    refused(workbook(sheet_xml(rows)), "t.xlsx", "a tag or text longer than 1 MB")


def test_dtd_entity_bomb_is_refused() -> None:
    laughs = ('<!DOCTYPE sst [<!ENTITY a "aaaaaaaaaa">'
              + "".join(f'<!ENTITY {b} "{("&" + a + ";") * 10}">'
                        for a, b in zip("abcdefgh", "bcdefghi"))
              + "]>")  # fmt: skip
    content = workbook(header_and_rows(2), strings_xml(["age", "&i;"], doctype=laughs))
    refused(content, "laughs.xlsx", "declares a DTD")


def test_zip_entry_count_is_checked_before_the_directory_is_loaded(monkeypatch) -> None:
    monkeypatch.setattr(data_module, "MAX_ZIP_ENTRIES", 20)
    content = workbook(header_and_rows(2), extra=30)
    refused(content, "many.xlsx", "more than 20 entries")
    # an end record that under-declares the count is caught by walking the directory
    end = content.rfind(b"PK\x05\x06")
    lying = bytearray(content)
    struct.pack_into("<HH", lying, end + 8, 5, 5)
    refused(bytes(lying), "lying.xlsx", "more than 20 entries")
    assert len(read_table(workbook(header_and_rows(2), extra=10), name="ok.xlsx")) == 2


# ---------------------------------------------------------------------------- parquet


def parquet_bytes(table: pa.Table, **options) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **options)
    return buffer.getvalue()


def dictionary_bomb(rows: int, length: int) -> bytes:
    """One `length`-character string repeated on every row: a dictionary of one entry
    and a run of zeros, a few kilobytes on disk for rows x length bytes decoded."""
    value = pa.array(["s" * length]).dictionary_encode()
    column = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), value.dictionary)
    table = pa.table({"age": pa.array(range(rows), pa.float64()), "site": column})
    return parquet_bytes(table, compression="zstd")


def test_dictionary_parquet_bomb_is_refused_with_little_memory(tmp_path: Path) -> None:
    """6,000 rows of one 1 MB string: under 400 KB on disk, 6 GB decoded (issue 20, 3)."""
    bomb = tmp_path / "bomb.parquet"
    bomb.write_bytes(dictionary_bomb(6_000, MB))
    assert bomb.stat().st_size < 400_000
    child = (
        "import os, resource, sys\n"
        "from normcore.data import read_table\n"
        "from normcore.errors import DataError\n"
        "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "before = peak()\n"
        "try:\n"
        "    read_table(sys.argv[1])\n"
        "except DataError as exc:\n"
        "    print(exc)\n"
        "print(peak() - before, flush=True)\n"
        # the measurement is printed: skip interpreter teardown, where Arrow's and
        # torch's thread pools can race on a loaded machine
        "os._exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", child, str(bomb)], cwd=REPO, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    message, growth = done.stdout.strip().splitlines()
    assert message.startswith("'bomb.parquet': its values decode to 6,000 MB"), message
    assert "the limit is 1,024 MB" in message
    assert int(growth) < 200 * MB, f"reading grew the peak by {int(growth) / MB:.0f} MB"


def test_parquet_dictionary_strings_within_the_limit_read_as_text() -> None:
    df = read_table(dictionary_bomb(30, 10), name="ok.parquet")
    assert df["site"].tolist() == ["s" * 10] * 30 and df["site"].dtype == "str"


def test_parquet_limits_checked_from_the_footer(monkeypatch) -> None:
    monkeypatch.setattr(data_module, "MAX_UNPACKED_BYTES", MB)
    constant = pa.table({"x": pa.array([1.5] * 200_000)})  # 1.6 MB decoded, ~1 KB stored
    content = parquet_bytes(constant)
    assert len(content) < 10_000
    refused(content, "c.parquet", "200,000 rows x 1 columns decode to 2 MB", "limit is 1 MB")
    noise = pa.table({"x": pa.array([float(i) * 1.1 for i in range(300_000)])})
    refused(parquet_bytes(noise, compression="zstd"), "n.parquet", "its pages unpack to")


def test_parquet_nested_columns_are_refused() -> None:
    nested = pa.table({"age": [20.0], "x": pa.array([[1, 2, 3]])})
    refused(parquet_bytes(nested), "n.parquet", "column 'x' holds nested values")


# ------------------------------------------------------------------ fuzzing the bombs

_DIMENSION = st.sampled_from([None, "A1", "A1:B2", "A1:B11", "A1:XFD1048576", "A1:XFD10001",
                              "B3:A1", "garbage", "A1:ZZZZ9"])  # fmt: skip
_COLUMN = st.sampled_from(["A", "B", "C", "GR", "GS", "XFD"])  # GR = 200, GS = 201


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_rows=st.integers(0, 40),
    dimension=_DIMENSION,
    far=st.lists(st.tuples(st.integers(1, 45), _COLUMN), max_size=4),
    string_length=st.sampled_from([0, 5, 300, 301, 2_000]),
    declared=st.sampled_from([None, 10 * MB, 2 * MB, 2**32 - 1]),
    doctype=st.booleans(),
)
def test_fuzzed_workbook_bombs(n_rows, dimension, far, string_length, declared, doctype) -> None:
    """Random stale or huge dimensions, far cells, long strings, lying sizes and DTDs,
    under small limits: a table with every real row, or one DataError, never more
    memory than the limits allow."""
    rows = [row(1, shared("A1", 0), shared("B1", 1))]
    rows += [row(i, num(f"A{i}", i), num(f"B{i}", 1)) for i in range(2, n_rows + 2)]
    extra = {r: c for r, c in far if r > n_rows + 1}
    rows += [row(r, num(f"{c}{r}", 7)) for r, c in sorted(extra.items())]
    laughs = '<!DOCTYPE sst [<!ENTITY a "aaaa">]>' if doctype else ""
    content = workbook(sheet_xml(rows, dimension), strings_xml(["age", "x" * string_length],
                                                                doctype=laughs))  # fmt: skip
    if declared is not None:
        content = declare_size(content, "xl/sharedStrings.xml", declared)
    tracemalloc.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in (("MAX_ROWS", 30), ("MAX_COLUMNS", 200), ("MAX_CELL_CHARS", 300),
                                ("MAX_WHOLE_PART_BYTES", 5 * MB)):  # fmt: skip
                patch.setattr(data_module, name, value)
            df = read_table(content, name="f.xlsx")
    except DataError as exc:
        assert str(exc).startswith("'f.xlsx'") and len(str(exc).splitlines()) == 1
    else:
        assert not doctype and string_length <= 300 and declared in (None, 2 * MB)
        assert len(df) <= 30 and df.shape[1] <= 200
        last_row = max([n_rows + 1, *extra])
        assert len(df) == last_row - 1  # every real row, whatever the dimension said
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 30 * MB


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 3_000),
    length=st.integers(1, 5_000),
    distinct=st.integers(1, 4),
    row_group=st.sampled_from([None, 100, 1_000]),
)
def test_fuzzed_parquet_dictionary_bombs(rows, length, distinct, row_group) -> None:
    """Few distinct long strings over many rows, under a 2 MB limit: refused exactly
    when the decoded strings pass the limit, read in full otherwise."""
    values = pa.array([f"s{i}" * length for i in range(distinct)]).dictionary_encode()
    indices = pa.array([i % distinct for i in range(rows)], pa.int32())
    table = pa.table({"n": pa.array(range(rows), pa.int64()),
                      "s": pa.DictionaryArray.from_arrays(indices, values.dictionary)})
    content = parquet_bytes(table, row_group_size=row_group, compression="zstd")
    text_bytes = sum(len(f"s{i % distinct}" * length) for i in range(rows))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(data_module, "MAX_UNPACKED_BYTES", 2 * MB)
            df = read_table(content, name="p.parquet")
    except DataError as exc:
        assert "decode to" in str(exc) and "the limit is 2 MB" in str(exc), str(exc)
        assert text_bytes > MB  # never a small table (offsets add at most 48 KB here)
    else:
        assert text_bytes <= 2 * MB
        assert df["s"].tolist() == [f"s{i % distinct}" * length for i in range(rows)]
