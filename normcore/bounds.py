"""Size checks on compressed tables, made before anything is decompressed.

An upload's byte limit says little about a compressed format: a workbook is a zip of XML
and a Parquet file holds compressed, often dictionary-encoded pages, so a file of a few
hundred kilobytes can declare or decode to gigabytes. Every check here reads only what the
file declares about itself (the zip directory, Parquet's footer metadata) or streams the
content without keeping it, and refuses with a `DataError` that says what is too large
and what the limit is. The limits themselves live in `normcore.data` (documented in the
README) and arrive as a `Limits`, so the in-memory reader and the streamer share them.

Declared sizes can be trusted as upper bounds: Python's zipfile stops each entry at its
declared uncompressed size (a longer stream fails its CRC check), and Arrow reads a Parquet
page into a buffer of the page header's declared size.
"""

from __future__ import annotations

import io
import struct
import xml.parsers.expat
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from normcore.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

__all__ = [
    "Limits",
    "check_parquet_metadata",
    "check_xlsx",
    "decoded_bytes",
    "dictionary_columns",
    "plain_table",
]

_MB = 1024 * 1024
_EOCD = b"PK\x05\x06"  # end of central directory record (PKWARE APPNOTE 4.3.16)
_CENTRAL_HEADER = b"PK\x01\x02"  # central directory file header (APPNOTE 4.3.12)
_EOCD_SIZE = 22
_MAX_ZIP_COMMENT = 0xFFFF
_SCAN_BLOCK = 64 * 1024  # must stay below _MAX_TOKEN_BYTES
#: Root elements of the parts the workbook reader streams row by row; every other XML
#: part is parsed whole and so is held to `whole_part_bytes`.
_STREAMED_ROOTS = frozenset({"worksheet", "chartsheet", "dialogsheet"})
#: Roots whose every text run is cell content, bounded by `cell_chars`.
_CELL_ROOTS = frozenset({"worksheet", "sst"})
_CELL_ELEMENTS = frozenset({"si", "c"})  # a shared-string item, a worksheet cell
#: Longest tag or text run allowed in a worksheet or the shared strings: a cell's text
#: (32,767 characters, at most 4 bytes each in UTF-8) and its tag fit with room to spare.
_MAX_TOKEN_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one table may hold; see `normcore.data` for the values and why."""

    rows: int
    columns: int
    unpacked_bytes: int
    whole_part_bytes: int
    zip_entries: int
    cell_chars: int


# -------------------------------------------------------------------------------- xlsx


def check_xlsx(data: bytes, limits: Limits) -> None:
    """Refuse a workbook whose zip directory or XML would unpack beyond the limits.

    In order, before any part is parsed: the number of zip entries (counted from the
    central directory's own headers, so that not even the directory is loaded when it is
    too long), the total declared uncompressed size, then one streaming pass over every
    XML part that keeps nothing: no DTD (ECMA-376 Part 2 [M1.18] forbids them in a
    package, and they carry entity-expansion bombs), every part other than a worksheet
    within `whole_part_bytes` (the reader parses those whole, the shared strings among
    them), and no shared string or cell longer than `cell_chars`. The sheet's
    `<dimension>` is not consulted: rows and columns are counted as the sheet is read.
    """
    _check_zip_directory(data, limits)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))  # shares the bytes, no copy
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip the reader can open: it says so in its own words
    with archive:
        entries = archive.infolist()
        total = sum(info.file_size for info in entries)
        if total > limits.unpacked_bytes:
            raise DataError(
                f"the workbook's parts unpack to {total / _MB:,.0f} MB; the limit is "
                f"{limits.unpacked_bytes / _MB:,.0f} MB."
            )
        for info in entries:
            try:
                stream = archive.open(info)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, ValueError):
                continue  # encrypted or unknown compression: the reader reports it
            with stream:
                _scan_part(stream, info, limits)


def _check_zip_directory(data: bytes, limits: Limits) -> None:
    start = max(0, len(data) - _EOCD_SIZE - _MAX_ZIP_COMMENT)
    end = data.rfind(_EOCD, start)
    if end < 0 or end + _EOCD_SIZE > len(data):
        return  # not a zip: zipfile's own error follows
    declared, directory_size = struct.unpack_from("<HI", data, end + 10)
    # The declared count can lie (zipfile trusts the directory's size instead), so the
    # headers are walked too; ZIP64 (65,535 entries or more) is already beyond the limit.
    count, position = 0, end - directory_size
    while max(count, declared) <= limits.zip_entries and 0 <= position <= end - 46:
        if data[position : position + 4] != _CENTRAL_HEADER:
            break
        name, extra, comment = struct.unpack_from("<HHH", data, position + 28)
        position += 46 + name + extra + comment
        count += 1
    if max(count, declared) > limits.zip_entries:
        raise DataError(
            f"the workbook's zip archive has more than {limits.zip_entries:,} entries, the "
            "limit; a workbook needs a few dozen."
        )


class _PartScan:
    """expat handlers for one part: the checks, with the current text run's length."""

    def __init__(self, info: zipfile.ZipInfo, limits: Limits) -> None:
        self.info, self.limits = info, limits
        self.root: str | None = None
        self.in_cell = False
        self.run = 0

    def doctype(self, *_args: object) -> None:
        raise DataError(
            f"its part '{self.info.filename}' declares a DTD, which a workbook never holds "
            "(ECMA-376 Part 2 forbids them); it is refused as a possible entity bomb."
        )

    def start(self, name: str, _attributes: object) -> None:
        local = name.rpartition(":")[2]
        if self.root is None:
            self.root = local
            if local not in _STREAMED_ROOTS and self.info.file_size > self.limits.whole_part_bytes:
                raise DataError(
                    f"its part '{self.info.filename}' unpacks to "
                    f"{self.info.file_size / _MB:,.0f} MB; parts read whole (shared strings, "
                    f"styles) may hold at most {self.limits.whole_part_bytes / _MB:,.0f} MB."
                )
        if local in _CELL_ELEMENTS:
            self.in_cell, self.run = True, 0
        elif not self.in_cell:
            self.run = 0

    def end(self, name: str) -> None:
        if name.rpartition(":")[2] in _CELL_ELEMENTS:
            self.in_cell = False
        if not self.in_cell:
            self.run = 0

    def text(self, data: str) -> None:
        if self.root not in _CELL_ROOTS:
            return
        self.run += len(data)
        if self.run > self.limits.cell_chars:
            what = "a shared string" if self.root == "sst" else "a cell"
            raise DataError(
                f"{what} in '{self.info.filename}' is longer than "
                f"{self.limits.cell_chars:,} characters, the most an Excel cell can hold."
            )

    def token_guarded(self) -> bool:
        """Whether one tag or text run may be held to _MAX_TOKEN_BYTES: everywhere before
        the root element, then in the parts made of cells (other parts, such as Power
        Query's base64 in customXml, may hold long text the reader never parses)."""
        return self.root is None or self.root in _CELL_ROOTS | _STREAMED_ROOTS


def _scan_part(stream: BinaryIO, info: zipfile.ZipInfo, limits: Limits) -> None:
    """Stream one part through expat, keeping nothing but the current text run's length.

    expat holds a whole tag (with its attributes) or comment before reporting it, so the
    raw bytes are checked first for a run without '<' longer than _MAX_TOKEN_BYTES. A
    part that is not XML (an image, a VBA project) stops the scan at its first bytes; a
    part malformed later stops it there, where the reader's parser (the same expat) fails.
    """
    scan = _PartScan(info, limits)
    parser = xml.parsers.expat.ParserCreate()
    parser.StartDoctypeDeclHandler = scan.doctype
    parser.EntityDeclHandler = scan.doctype
    parser.StartElementHandler = scan.start
    parser.EndElementHandler = scan.end
    parser.CharacterDataHandler = scan.text
    since_tag = 0  # bytes since the last '<'
    try:
        while block := stream.read(_SCAN_BLOCK):
            last = block.rfind(b"<")
            if scan.token_guarded():
                # a run inside one block is shorter than the block; only runs across
                # blocks can pass the limit
                leading = len(block) if last < 0 else block.index(b"<")
                if since_tag + leading > _MAX_TOKEN_BYTES:
                    raise DataError(
                        f"its part '{info.filename}' holds a tag or text longer than "
                        f"{_MAX_TOKEN_BYTES // _MB} MB, which no workbook cell needs."
                    )
            since_tag = since_tag + len(block) if last < 0 else len(block) - last - 1
            parser.Parse(block, False)
        parser.Parse(b"", True)
    except (xml.parsers.expat.ExpatError, zipfile.BadZipFile, OSError, EOFError):
        return


# ----------------------------------------------------------------------------- parquet


def check_parquet_metadata(
    metadata: pq.FileMetaData, schema: pa.Schema, limits: Limits, whole_file: bool
) -> None:
    """Refuse a Parquet file from its footer alone, before any page is read.

    Nested columns (lists, structs, maps) are refused: a table has one value per cell,
    and repetition levels let a few bytes stand for millions of values. `whole_file`
    (the in-memory reader) bounds the rows, the pages' total uncompressed size and the
    fixed-width columns' decoded size; the streamer, which holds one row group's pages
    and one batch at a time, bounds each row group's uncompressed size instead. Strings
    are bounded after a dictionary-preserving read, by `decoded_bytes`.
    """
    import pyarrow as pa

    if len(schema) > limits.columns:
        raise DataError(f"it has {len(schema):,} columns; the limit is {limits.columns:,} columns.")
    for field in schema:
        if pa.types.is_nested(field.type):
            raise DataError(
                f"column '{field.name}' holds nested values ({field.type}); a table needs one "
                "value per cell."
            )
    groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
    sizes = [
        sum(group.column(j).total_uncompressed_size for j in range(group.num_columns))
        for group in groups
    ]
    stored = sum(sizes) if whole_file else max(sizes, default=0)
    if stored > limits.unpacked_bytes:
        scope = "its pages" if whole_file else "one row group's pages"
        raise DataError(
            f"{scope} unpack to {stored / _MB:,.0f} MB; the limit is "
            f"{limits.unpacked_bytes / _MB:,.0f} MB."
        )
    if not whole_file:
        return
    if metadata.num_rows > limits.rows:
        raise DataError(
            f"it has more than {limits.rows:,} rows, the limit; split it into smaller tables."
        )
    fixed = metadata.num_rows * sum(_fixed_width(field.type) for field in schema)
    if fixed > limits.unpacked_bytes:
        raise DataError(
            f"its {metadata.num_rows:,} rows x {len(schema):,} columns decode to "
            f"{fixed / _MB:,.0f} MB; the limit is {limits.unpacked_bytes / _MB:,.0f} MB."
        )


def _fixed_width(arrow_type: pa.DataType) -> float:
    """Bytes per value once decoded; a string counts only its offset (its text is
    measured by `decoded_bytes`), a dictionary column its index."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.index_type
    try:
        return arrow_type.bit_width / 8
    except ValueError:
        return 8.0  # variable-length: a 4- or 8-byte offset per value


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """String and binary columns, to be read dictionary-encoded so that a few distinct
    long values repeated over many rows stay small until measured."""
    import pyarrow as pa

    binary = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
              pa.types.is_large_binary)  # fmt: skip
    return [field.name for field in schema if any(test(field.type) for test in binary)]


def decoded_bytes(table: pa.Table | pa.RecordBatch) -> int:
    """Bytes the table will take once every dictionary column is decoded to plain values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = 0
    for column in table.columns:
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        for chunk in chunks:
            if not pa.types.is_dictionary(chunk.type):
                total += chunk.nbytes
                continue
            value_type = chunk.type.value_type
            if pa.types.is_binary(value_type) or pa.types.is_string(value_type) or (
                pa.types.is_large_binary(value_type) or pa.types.is_large_string(value_type)
            ):
                lengths = pc.take(pc.binary_length(chunk.dictionary), chunk.indices)
                total += int(pc.sum(lengths).as_py() or 0) + 8 * len(chunk)
            else:
                total += int(_fixed_width(value_type) * len(chunk))
    return total


def plain_table(table: pa.Table, limits: Limits) -> pa.Table:
    """The table with dictionary columns decoded, refused first when that would exceed
    `limits.unpacked_bytes` (a few kilobytes of dictionary can stand for gigabytes)."""
    import pyarrow as pa

    size = decoded_bytes(table)
    if size > limits.unpacked_bytes:
        raise DataError(
            f"its values decode to {size / _MB:,.0f} MB (long repeated strings); the limit "
            f"is {limits.unpacked_bytes / _MB:,.0f} MB."
        )
    columns = [
        column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column
        for column in table.columns
    ]
    return pa.Table.from_arrays(columns, names=table.column_names, metadata=table.schema.metadata)
