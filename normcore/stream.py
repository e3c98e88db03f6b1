"""Scoring cohorts too large to hold at once: read a chunk, score it, append it, repeat.

A long score table has one row per person and IDP (100,000 people x 20 IDPs is 2 million
rows of ten columns), so scoring a whole cohort in one call holds the input, the long
table and pandas' temporaries at once. Here memory is bounded by `chunk_rows`: CSV/TSV
are read with pandas' chunked reader and Parquet with pyarrow's batch iterator, every
chunk's cells are converted exactly as `read_table` converts them (same missing tokens,
same decimal-comma rule), and each chunk's results are appended to the output CSV.
The in-memory reader's rules hold here too: the header passes the same column check
(`data.check_column_names`: the column limit, no name twice), and Parquet is bounded by
its footer and each batch's decoded size before any value is decoded (`normcore.bounds`).
Rows are not limited: reading a chunk at a time is what this module is for.

The output is the file the non-streaming path writes (`model.score(read_table(f))`
then `export.write_csv`), byte for byte: `row` counts from the top of the file, not of
the chunk, and validation problems name rows of the whole file. Nothing is written to
`out_path` unless every chunk passes validation: results go to a temporary file that
replaces `out_path` only at the end (`safe_write.atomic_output`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from normcore import bounds, data, formats
from normcore.errors import DataError
from normcore.export import write_csv
from normcore.safe_write import atomic_output
from normcore.schema import Problem, ValidationReport

if TYPE_CHECKING:
    from normcore.model import NormativeModel

Progress = Callable[[int, int], None]
"""progress(rows scored so far, rows in the file (an estimate for text files))."""


@dataclass
class StreamSummary:
    """What a streamed scoring run did: rows and chunks scored, warnings on file rows."""

    rows: int
    chunks: int
    warnings: list[Problem]


def streamable(path: str | os.PathLike) -> bool:
    """Whether the file's format can be read in chunks (CSV/TSV/TXT or Parquet)."""
    found = formats.format_of(Path(path))
    return found is not None and found.kind in formats.STREAMABLE_KINDS


def _is_parquet(path: Path) -> bool:
    found = formats.format_of(path)
    return found is not None and found.kind == "parquet"


def count_rows(path: str | os.PathLike) -> int:
    """Data rows in the file: exact for Parquet, the number of lines minus one for text.

    Text files are counted by newlines in 1 MB blocks (a quoted field with line breaks
    counts twice), which is enough to decide whether to stream and to show progress.
    """
    path = Path(path)
    if _is_parquet(path):
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    lines, last = 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return max(lines + (last != b"\n") - 1, 0)


def _text_format(path: Path) -> tuple[str, str]:
    """(encoding, delimiter) of a text table, judged on its first 64 kB as read_table does;
    the header line is checked as read_table checks it."""
    with path.open("rb") as f:
        head = f.read(64 * 1024)
    if b"\n" in head:
        head = head[: head.rindex(b"\n")]
    encoding, text = data.decode_text(head)
    found = formats.format_of(path)
    delimiter = data._sniff_delimiter(text, found.delimiter if found else None)
    header = next(csv.reader(io.StringIO(text), delimiter=delimiter), [])
    data.check_column_names([name.strip() for name in header])
    return encoding, delimiter


def _with_last(chunks: Iterator[pd.DataFrame]) -> Iterator[tuple[pd.DataFrame, bool]]:
    """Each chunk with a flag telling whether it is the file's last."""
    current = next(chunks, None)
    while current is not None:
        following = next(chunks, None)
        yield current, following is None
        current = following


def _raw_chunks(path: Path, chunk_rows: int) -> Iterator[tuple[pd.DataFrame, bool]]:
    """Unconverted chunks (text cells, or Parquet's own types) and the decimal-comma rule."""
    try:
        if _is_parquet(path):
            yield from ((df, False) for df in _parquet_batches(path, chunk_rows))
            return
        encoding, delimiter = _text_format(path)
    except DataError as exc:
        raise DataError(f"'{path.name}': {exc}") from None
    reader = pd.read_csv(
        path, sep=delimiter, dtype=str, keep_default_na=False, na_filter=False,
        skip_blank_lines=False, index_col=False, encoding=encoding, chunksize=chunk_rows,
        engine="c",
    )  # fmt: skip
    try:
        for chunk in reader:
            yield chunk, delimiter != ","
    except pd.errors.ParserError as exc:
        raise DataError(f"'{path.name}': {data._explain_parser_error(exc)}") from None
    except UnicodeDecodeError:
        raise DataError(f"'{path.name}': the text changes encoding part-way through.") from None


def _parquet_batches(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Batches of a Parquet file, each bounded before its values are decoded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    limits = data.current_limits()
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    data.check_column_names([str(n).strip() for n in schema.names])
    bounds.check_parquet_metadata(parquet.metadata, schema, limits, whole_file=False)
    parquet = pq.ParquetFile(path, read_dictionary=bounds.dictionary_columns(schema))
    metadata = schema.pandas_metadata or {}
    index = [c for c in metadata.get("index_columns", []) if isinstance(c, str)]
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        df = bounds.plain_table(pa.Table.from_batches([batch]), limits).to_pandas()
        if index:
            df = df.reset_index(drop=all(n is None for n in df.index.names))
        yield df


def iter_chunks(path: str | os.PathLike, chunk_rows: int = 10_000) -> Iterator[pd.DataFrame]:
    """The table in chunks of at most `chunk_rows` rows, cells converted as by read_table.

    Each chunk has a fresh 0-based index; blank lines are kept where read_table keeps
    them (as rows that fail validation) and dropped only at the end of the file.
    """
    path = Path(path)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    offset = 0
    for (raw, decimal_comma), last in _with_last(_raw_chunks(path, chunk_rows)):
        raw = raw.set_axis([str(c).strip() for c in raw.columns], axis=1)
        raw = raw.reset_index(drop=True)
        try:
            df = data._finalise(raw, decimal_comma=decimal_comma)
        except DataError as exc:
            if offset and "no data rows" in str(exc):  # only blank lines in this chunk
                df = raw.iloc[:0]
            else:
                raise DataError(f"'{path.name}': {exc}") from None
        if len(df) < len(raw) and not last:
            blank = tuple(range(offset + len(df), offset + len(raw)))
            ValidationReport(
                [Problem("error", None, blank, "the row is empty; delete it.")]
            ).raise_for_errors()
        offset += len(raw)
        if len(df):
            yield df


def _shifted(problems: list[Problem], offset: int) -> list[Problem]:
    return [dataclasses.replace(p, rows=tuple(r + offset for r in p.rows)) for p in problems]


def _repeated_ids(ids: pd.Series, seen: set[str], column: str, offset: int) -> list[Problem]:
    """A warning for ids already met in earlier chunks (one chunk's validation cannot)."""
    values = ids.astype(str).to_numpy()
    again = [i for i, v in enumerate(values) if v in seen]
    seen.update(values)
    if not again:
        return []
    shown = ", ".join(f"'{values[i]}'" for i in again[:5])
    return [
        Problem(
            "warning",
            column,
            tuple(offset + i for i in again),
            f"ids that also appear in earlier rows: {shown}. Each person's results are "
            "still written, once per row.",
        )
    ]


def score_file(
    model: NormativeModel,
    source_path: str | os.PathLike,
    out_path: str | os.PathLike,
    chunk_rows: int = 10_000,
    progress: Progress | None = None,
    prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> StreamSummary:
    """Score a CSV/TSV/Parquet file chunk by chunk into the long score CSV at `out_path`;
    `prepare` maps each chunk first (the CLI's category codings).

    Raises DataError naming file rows when any chunk fails validation (all chunks are
    checked, so every error is reported at once) and leaves `out_path` untouched.
    """
    source, out = Path(source_path), Path(out_path)
    if not source.is_file():
        raise DataError(f"There is no file at '{source}'.")
    total = count_rows(source)
    errors: list[Problem] = []
    warnings: list[Problem] = []
    seen_ids: set[str] = set()
    id_col = model.schema.id
    offset = chunks = 0
    with atomic_output(out, text=True) as f:
        for chunk in iter_chunks(source, chunk_rows):
            chunk = chunk if prepare is None else prepare(chunk)
            report = model.check(chunk)
            errors += _shifted(report.errors, offset)
            warnings += _shifted(report.warnings, offset)
            if id_col and id_col in chunk.columns:
                warnings += _repeated_ids(chunk[id_col], seen_ids, id_col, offset)
            if not errors:
                result = model.score(chunk)
                result["row"] += offset
                write_csv(result, f, header=chunks == 0)
            offset += len(chunk)
            chunks += 1
            if progress is not None:
                progress(offset, max(total, offset))
        ValidationReport(errors).raise_for_errors()
        if chunks == 0:
            raise DataError(f"'{source.name}' has column names but no data rows.")
    return StreamSummary(rows=offset, chunks=chunks, warnings=warnings)
