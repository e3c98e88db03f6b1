"""Reading uploaded tables safely, and splitting them for validation.

Tables come from clinicians' exports and browser uploads: CSV with commas, semicolons or
tabs, UTF-8 or Windows encodings, Excel workbooks, Parquet files, and sometimes something
that is not a table at all. `read_table` turns every one of these into either a DataFrame
or a `DataError` with a one-line reason, never a parser traceback. It reads into memory
only (uploads may hold clinical data, so nothing is written to disk) and enforces size
limits so that one upload cannot exhaust a shared server: compressed formats (Excel
workbooks, Parquet) are bounded by what they declare before they are decompressed
(`normcore.bounds`), and the streamer (`normcore.stream`) applies the same rules.

Cells are not judged here: a column of numbers with one 'abc' stays text so that
`normcore.schema.validate_training` can name the offending cell and row.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from normcore import bounds, formats
from normcore.errors import DataError
from normcore.schema import MISSING_TOKENS, coerce_categories

__all__ = [
    "MAX_BYTES",
    "MAX_CELL_CHARS",
    "MAX_COLUMNS",
    "MAX_ROWS",
    "MAX_UNPACKED_BYTES",
    "MAX_WHOLE_PART_BYTES",
    "MAX_ZIP_ENTRIES",
    "check_column_names",
    "current_limits",
    "read_table",
    "split_table",
]

#: Largest file accepted, in bytes (200 MB).
MAX_BYTES = 200 * 1024 * 1024
#: Largest number of data rows accepted.
MAX_ROWS = 200_000
#: Largest number of columns accepted.
MAX_COLUMNS = 5_000
#: Most a compressed table may unpack to: a workbook's zip parts together, or a Parquet
#: file's pages and then its decoded values (1 GiB, five times the largest upload).
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
#: Most a workbook part parsed whole (shared strings, styles, the workbook) may unpack to;
#: worksheets are streamed row by row and count only towards MAX_UNPACKED_BYTES.
MAX_WHOLE_PART_BYTES = 100 * 1024 * 1024
#: Most zip entries a workbook may have (one with a hundred sheets has a few hundred).
MAX_ZIP_ENTRIES = 10_000
#: Longest text in one workbook cell or shared string: Excel's own limit ("Excel
#: specifications and limits", Microsoft Support).
MAX_CELL_CHARS = 32_767

_DELIMITERS = (",", ";", "\t", "|")
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "vertical bar"}
_SNIFF_CHARS = 64 * 1024
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_DECIMAL_COMMA_NUMBER = re.compile(r"^[+-]?\d+(,\d+)?([eE][+-]?\d+)?$")
_FIELD_COUNT = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def read_table(
    source: str | os.PathLike[str] | bytes | BinaryIO, name: str | None = None
) -> pd.DataFrame:
    """Read a CSV, TSV, Parquet or Excel table from a path, bytes or a binary file object.

    The format comes from the extension of `name` (or of the path, or of the file
    object's `.name`, as Streamlit's UploadedFile has); without one it is recognised from
    the content. CSV/TXT delimiters (comma, semicolon, tab, vertical bar) are sniffed;
    text is decoded as UTF-8 (with or without BOM), else Windows-1252, else Latin-1.
    Excel: only the first sheet is read; when the workbook has several, the returned
    frame's `attrs["notes"]` says so. A file object is read from its start.

    Columns whose every filled cell is a number come back numeric (with a semicolon or
    tab delimiter a decimal comma, 3,5, is accepted); all others come back as text with
    missing cells as NaN. Cells such as '', 'NA', 'N/A', 'null' count as missing. The
    index is a fresh 0-based RangeIndex: row i is spreadsheet line i + 2.

    Raises DataError with a one-line reason for anything that is not a usable table:
    unsupported or mismatched file type, undecodable or binary content, an empty file, a
    header without rows, duplicated or missing column names, ragged lines, or a file
    beyond MAX_BYTES, MAX_ROWS or MAX_COLUMNS.
    """
    data, name = _source_bytes(source, name)
    label = f"'{name}'" if name else "The file"
    kind, delimiter = _detect_kind(data, name, label)
    try:
        if kind == "parquet":
            df = _read_parquet(data)
        elif kind == "excel":
            df = _read_excel(data)
        else:
            df = _read_text(data, delimiter)
    except DataError as exc:
        raise DataError(f"{label}: {exc}") from None
    except MemoryError:
        raise DataError(f"{label} is too large to load into memory.") from None
    except Exception as exc:  # the reader's own errors are not meant for a person
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = {"parquet": "a Parquet file", "excel": "an Excel workbook"}.get(kind, "a table")
        raise DataError(f"{label} could not be read as {what} ({reason}).") from None
    return df


def split_table(
    df: pd.DataFrame, test_fraction: float, stratify: str | None, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into (train, test), reproducibly for a given seed.

    With `stratify`, each level of that column is split in the same proportion, so a
    small site is not by chance absent from one side; levels too rare to put even one row
    in the test part (count * test_fraction < 1) go entirely to train, where the model
    needs them. Both parts keep the original row order and get a fresh 0-based index.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction!r}")
    n = len(df)
    rng = np.random.default_rng(seed)
    if stratify is None:
        groups = [np.arange(n)]
    else:
        if stratify not in df.columns:
            raise DataError(f"Cannot stratify the split: there is no column '{stratify}'.")
        levels = coerce_categories(df[stratify]).fillna("").to_numpy(dtype=object)
        groups = [np.flatnonzero(levels == level) for level in sorted(set(levels))]
    test_parts = []
    for rows in groups:
        size = len(rows)
        if size * test_fraction < 1.0:
            continue
        n_test = min(max(int(round(size * test_fraction)), 1), size - 1)
        test_parts.append(rng.permutation(rows)[:n_test])
    test = np.sort(np.concatenate(test_parts)) if test_parts else np.array([], dtype=int)
    train = np.setdiff1d(np.arange(n), test)
    return (
        df.iloc[train].reset_index(drop=True),
        df.iloc[test].reset_index(drop=True),
    )


def current_limits() -> bounds.Limits:
    """The limits in force, read when called (so that a test may lower one)."""
    return bounds.Limits(
        rows=MAX_ROWS,
        columns=MAX_COLUMNS,
        unpacked_bytes=MAX_UNPACKED_BYTES,
        whole_part_bytes=MAX_WHOLE_PART_BYTES,
        zip_entries=MAX_ZIP_ENTRIES,
        cell_chars=MAX_CELL_CHARS,
    )


def check_column_names(names: list[str]) -> None:
    """Refuse a header beyond MAX_COLUMNS or naming a column twice (blank names aside).

    Every reader and the streamer call this on the header before reading rows: a repeated
    name would otherwise be renamed by one parser ('x.1') and kept by another, and the
    wrong one scored."""
    if len(names) > MAX_COLUMNS:
        raise DataError(_too_many_columns(len(names)))
    _check_unique(names)


# ------------------------------------------------------------------------ getting bytes


def _source_bytes(source: Any, name: str | None) -> tuple[bytes, str | None]:
    """The raw content and a display/extension name, refusing oversized input early."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = name or path.name
        try:
            if not path.is_file():
                raise DataError(f"There is no file at '{path}'.")
            size = path.stat().st_size
            if size > MAX_BYTES:
                raise DataError(_too_big(name, size))
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"'{path}' could not be opened ({exc.strerror or exc}).") from None
    elif hasattr(source, "read"):
        if name is None and isinstance(getattr(source, "name", None), str):
            name = os.path.basename(source.name)
        try:
            if hasattr(source, "seek"):
                source.seek(0)
            data = source.read(MAX_BYTES + 1)
        except (OSError, ValueError) as exc:
            raise DataError(f"The upload could not be read ({exc}).") from None
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not isinstance(data, (bytes, bytearray)):
            raise DataError("The upload did not give bytes; open the file in binary mode.")
        data = bytes(data)
    else:
        raise DataError(f"Cannot read a table from a {type(source).__name__}.")
    if len(data) > MAX_BYTES:
        raise DataError(_too_big(name, len(data)))
    if not data.strip():
        raise DataError(f"{repr(name) if name else 'The file'} is empty.")
    return data, name


def _too_big(name: str | None, size: int) -> str:
    what = repr(name) if name else "The file"
    return (
        f"{what} is larger than the limit of {MAX_BYTES // (1024 * 1024)} MB "
        f"(at least {size / (1024 * 1024):.0f} MB); split it or remove unused columns."
    )


def _detect_kind(data: bytes, name: str | None, label: str) -> tuple[str, str | None]:
    """('text' | 'excel' | 'parquet', preferred delimiter), from the extension checked
    against the content, so a renamed file fails with a reason instead of garbage."""
    ext = Path(name).suffix.lower() if name else ""
    declared = formats.format_of(name)
    looks_like = formats.kind_of_content(data)
    if ext == formats.OLD_EXCEL_SUFFIX or (
        looks_like == "old-excel" and (not ext or (declared and declared.kind == "excel"))
    ):
        raise DataError(
            f"{label} is in the old Excel 97-2003 format (.xls), which cannot be read; "
            "open it in Excel and save it as .xlsx or CSV."
        )
    if declared and declared.kind == "parquet" and looks_like != "parquet":
        raise DataError(f"{label} is named like a Parquet file but is not a valid one.")
    if declared and declared.kind == "excel" and looks_like != "excel":
        raise DataError(f"{label} is named like an Excel workbook but is not a valid .xlsx file.")
    if declared and declared.kind == "text":
        if looks_like != "text":
            actual = {"parquet": "a Parquet file", "excel": "an Excel workbook (or another zip "
                      "file)", "old-excel": "an old Office document"}[looks_like]
            raise DataError(
                f"{label} is named like a text table but is {actual}; give it the right "
                "extension, or export it as CSV."
            )
        return "text", declared.delimiter
    if ext and declared is None:
        raise DataError(
            f"{label}: files of type '{ext}' are not supported; use CSV, TSV, Parquet or "
            "Excel (.xlsx)."
        )
    if looks_like == "old-excel":
        raise DataError(f"{label} is an Office document that is not an .xlsx workbook.")
    return looks_like, None


# ------------------------------------------------------------------------------- text


def _decode(data: bytes) -> str:
    # UTF-32's little-endian mark begins with UTF-16's: test it first, or every character
    # would come back with NULs between them (column names included).
    for marks, encoding in (((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"), "utf-32"),
                            ((b"\xff\xfe", b"\xfe\xff"), "utf-16")):
        if data.startswith(marks):
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError:
                raise DataError(f"the text is not valid {encoding.upper()}.") from None
            if "\x00" in text:
                raise DataError(
                    "this is not a text table (it contains binary data); use CSV, TSV, "
                    "Parquet or Excel (.xlsx)."
                )
            return text
    if b"\x00" in data:
        raise DataError(
            "this is not a text table (it contains binary data); use CSV, TSV, Parquet or "
            "Excel (.xlsx)."
        )
    _, text = decode_text(data)
    sample = text[:_SNIFF_CHARS]
    if len(_CONTROL_CHARS.findall(sample)) > len(sample) // 100:
        raise DataError(
            "this does not look like a text table (it contains unreadable characters); "
            "use CSV, TSV, Parquet or Excel (.xlsx)."
        )
    return text


def decode_text(data: bytes) -> tuple[str, str]:
    """(encoding, text) of a text table's bytes: UTF-8 (with or without a byte-order mark),
    else Windows-1252, which spreadsheets on Windows write, else Latin-1, which decodes
    any bytes (a last resort the unreadable-characters check then judges)."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return encoding, data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return "latin-1", data.decode("latin-1")


def _sniff_delimiter(text: str, preferred: str | None) -> str:
    """The candidate that splits the first lines into the same, largest number of fields.

    csv.Sniffer guesses letters as delimiters on short files; here only real separators
    compete, scored by how many lines agree with the header's field count."""
    sample = text[:_SNIFF_CHARS]
    if len(text) > _SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]
    order = ((preferred,) if preferred else ()) + tuple(d for d in _DELIMITERS if d != preferred)
    best, best_score = preferred or ",", (0.0, 1)
    for delimiter in order:
        try:
            counts = [len(r) for r in csv.reader(io.StringIO(sample), delimiter=delimiter) if r]
        except csv.Error:
            continue
        if not counts or counts[0] < 2:
            continue
        agreement = sum(c == counts[0] for c in counts) / len(counts)
        score = (agreement, counts[0])
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _read_text(data: bytes, preferred: str | None) -> pd.DataFrame:
    text = _decode(data)
    delimiter = _sniff_delimiter(text, preferred)
    try:
        header = next(csv.reader(io.StringIO(text), delimiter=delimiter), None)
    except csv.Error as exc:
        raise DataError(f"the header line could not be read ({exc}).") from None
    if not header or not any(h.strip() for h in header):
        raise DataError("the first line is empty; it must hold the column names.")
    names = [h.strip() for h in header]
    check_column_names(names)
    try:
        # The header line is parsed as a data row so that pandas sizes the table by it:
        # a longer line is then an error, never a column silently dropped or an index.
        raw = pd.read_csv(
            io.StringIO(text), sep=delimiter, header=None, dtype=str, keep_default_na=False,
            na_filter=False, skip_blank_lines=False, index_col=False, nrows=MAX_ROWS + 2,
            engine="c",
        )
    except pd.errors.ParserError as exc:
        if not _FIELD_COUNT.search(str(exc)):
            raise DataError(_explain_parser_error(exc)) from None
        raw = None
    except pd.errors.EmptyDataError:
        raise DataError("the file holds no table.") from None
    if raw is None or raw.shape[1] != len(names):
        df = _read_ragged_text(text, delimiter, names)
    else:
        df = raw.iloc[1:].set_axis(names, axis=1)
    return _finalise(df, decimal_comma=delimiter != ",")


def _read_ragged_text(text: str, delimiter: str, names: list[str]) -> pd.DataFrame:
    """Slow path for lines with more fields than the header: accepted only when the extra
    fields are empty (trailing separators), otherwise the first such line is named."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    next(reader)
    width = len(names)
    rows = []
    try:
        for fields in reader:
            if len(rows) > MAX_ROWS:
                break
            if len(fields) > width and any(f.strip() for f in fields[width:]):
                raise DataError(
                    f"line {reader.line_num} has {len(fields)} values but the header names "
                    f"{width} columns (separator: {_DELIMITER_NAMES[delimiter]}); check that "
                    "line for an extra separator or a missing quote."
                )
            rows.append((fields + [""] * width)[:width])
    except csv.Error as exc:
        raise DataError(f"line {reader.line_num} could not be read ({exc}).") from None
    return pd.DataFrame(rows, columns=range(width), dtype="str").set_axis(names, axis=1)


def _explain_parser_error(exc: Exception) -> str:
    message = str(exc)
    if "EOF inside string" in message:
        return "a quote (\") is opened but never closed; check the quotes in the file."
    return f"the file could not be split into columns ({message.strip().splitlines()[0]})."


# ------------------------------------------------------------------------ excel, parquet


def _read_excel(data: bytes) -> pd.DataFrame:
    from openpyxl import load_workbook  # local: only needed for workbooks
    from openpyxl.utils import get_column_letter

    bounds.check_xlsx(data, current_limits())
    workbook = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        sheets = workbook.worksheets
        if not sheets:
            raise DataError("the workbook has no sheets.")
        sheet = sheets[0]
        # The sheet's <dimension> is written by whatever saved the file and may be stale:
        # trusted, it cuts rows off (openpyxl stops at its last row) or pads every row to
        # a claimed width. Rows and widths are counted as they are read instead.
        sheet.reset_dimensions()
        header: tuple | None = None
        records = []
        for line, values in enumerate(sheet.iter_rows(values_only=True), start=1):
            width = _filled_width(values)
            if width > MAX_COLUMNS:
                raise DataError(
                    f"line {line} of the first sheet has a value in column "
                    f"{get_column_letter(width)} ({width:,}); the limit is {MAX_COLUMNS:,} "
                    "columns."
                )
            if header is None:
                header = tuple(values[:width])
            elif len(records) >= MAX_ROWS:
                raise DataError(_too_many_rows())
            else:
                records.append(tuple(values[:width]))
        if header is None:
            raise DataError(f"the first sheet ('{sheet.title}') is empty.")
        sheet_title, n_sheets = sheet.title, len(sheets)
    finally:
        workbook.close()
    width = max([len(header), *(len(r) for r in records)])
    names = [("" if h is None else str(h).strip()) for h in header] + [""] * (width - len(header))
    check_column_names(names)
    padded = [r + (None,) * (width - len(r)) for r in records]
    df = pd.DataFrame(padded, columns=pd.RangeIndex(width), dtype=object)
    df.columns = names
    df = _finalise(df, decimal_comma=False)
    if n_sheets > 1:
        df.attrs["notes"] = [
            f"The workbook has {n_sheets} sheets; only the first, '{sheet_title}', was read."
        ]
    return df


def _filled_width(values: tuple) -> int:
    """Cells up to the last one holding a value (openpyxl pads a row to its last cell)."""
    width = len(values)
    while width and values[width - 1] is None:
        width -= 1
    return width


def _read_parquet(data: bytes) -> pd.DataFrame:
    import pyarrow.parquet as pq  # local: only needed for Parquet

    limits = current_limits()
    parquet = pq.ParquetFile(io.BytesIO(data))
    schema = parquet.schema_arrow
    check_column_names([str(n).strip() for n in schema.names])
    bounds.check_parquet_metadata(parquet.metadata, schema, limits, whole_file=True)
    strings = bounds.dictionary_columns(schema)
    if strings:  # read again, keeping repeated strings as a dictionary until measured
        parquet = pq.ParquetFile(io.BytesIO(data), read_dictionary=strings)
    table = bounds.plain_table(parquet.read(), limits)
    pandas_index = [
        c for c in (table.schema.pandas_metadata or {}).get("index_columns", [])
        if isinstance(c, str)
    ]
    df = table.to_pandas()
    if pandas_index:  # an index saved by pandas is data (e.g. subject ids), keep it
        df = df.reset_index(drop=all(n is None for n in df.index.names))
    df.columns = [str(c).strip() for c in df.columns]
    check_column_names(list(df.columns))
    return _finalise(df, decimal_comma=False)


# -------------------------------------------------------------------------- normalising


def _too_many_columns(n: int) -> str:
    return f"it has {n:,} columns; the limit is {MAX_COLUMNS:,} columns."


def _too_many_rows() -> str:
    return f"it has more than {MAX_ROWS:,} rows, the limit; split it into smaller tables."


def _check_unique(names: list[str]) -> None:
    seen: dict[str, list[int]] = {}
    for position, name in enumerate(names):
        if name:
            seen.setdefault(name, []).append(position + 1)
    repeated = {n: p for n, p in seen.items() if len(p) > 1}
    if repeated:
        parts = [f"'{n}' (columns {', '.join(map(str, p))})" for n, p in repeated.items()]
        raise DataError(
            f"column names appear more than once: {'; '.join(parts)}. Give every column a "
            "unique name."
        )


def _cell_text(value: Any) -> Any:
    """A cell as stripped text, NaN when it holds nothing."""
    if value is None or value is pd.NA or value is pd.NaT:
        return np.nan
    if isinstance(value, float) and np.isnan(value):
        return np.nan
    text = value.strip() if isinstance(value, str) else str(value)
    return np.nan if text.lower() in MISSING_TOKENS else text


def _convert_column(series: pd.Series, decimal_comma: bool) -> pd.Series:
    """Numbers when every filled cell is one; otherwise text (NaN for empty cells)."""
    if pd.api.types.is_bool_dtype(series):
        return series.astype(object).map(_cell_text).astype("str")
    if pd.api.types.is_numeric_dtype(series):
        return series
    if pd.api.types.is_string_dtype(series) and not pd.api.types.is_object_dtype(series):
        stripped = series.str.strip()
        numbers = pd.to_numeric(stripped, errors="coerce")
        converted = numbers.notna()
        if converted.any() and bool((converted | stripped.isna()).all()):
            # Every filled cell is a number, so none is a missing-value word: the common
            # case, spared the word test below, which dominated reading a table.
            return numbers
        cells = stripped.mask(stripped.str.lower().isin(MISSING_TOKENS) | stripped.isna())
    else:
        cells = series.astype(object).map(_cell_text)
    filled = cells.notna()
    numbers = pd.to_numeric(cells, errors="coerce")
    if filled.any() and bool((numbers.notna() == filled).all()):
        return numbers
    text = cells.astype("str")
    if decimal_comma and filled.any():
        matches = text[filled.to_numpy()].str.fullmatch(_DECIMAL_COMMA_NUMBER.pattern)
        if bool(matches.all()):
            return pd.to_numeric(text.str.replace(",", ".", regex=False), errors="coerce")
    return text


def _finalise(df: pd.DataFrame, decimal_comma: bool) -> pd.DataFrame:
    """Shared last step: limits, unnamed columns, blank trailing rows, cell types."""
    names = [str(c) for c in df.columns]
    if len(df) > MAX_ROWS:
        raise DataError(_too_many_rows())
    converted = {}
    for position, name in enumerate(names):
        column = _convert_column(df.iloc[:, position], decimal_comma)
        if not name:
            if column.notna().any():
                raise DataError(
                    f"column {position + 1} has values but no name in the header line; "
                    "give it a name."
                )
            continue  # a trailing separator or an unused spreadsheet column
        converted[name] = column.reset_index(drop=True)
    if not converted:
        raise DataError("the header names no columns.")
    out = pd.DataFrame(converted)
    filled_rows = np.flatnonzero(out.notna().any(axis=1).to_numpy())
    out = out.iloc[: filled_rows[-1] + 1 if filled_rows.size else 0].reset_index(drop=True)
    if out.empty:
        raise DataError("it has column names but no data rows.")
    return out
