"""The file formats normcore reads: one registry for the reader, the streamer and the uploaders.

Each accepted suffix maps to a kind of reader (text, excel or parquet) and, for text, the
delimiter to try first. The content is then checked against the kind's magic bytes, so a
renamed file is refused with a reason rather than parsed as garbage. Excel 97-2003 (.xls)
is deliberately absent: it is an OLE compound file that no reader here understands, and
`normcore.data.read_table` explains how to convert it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

__all__ = [
    "FORMATS",
    "FileFormat",
    "Kind",
    "MAGIC",
    "OLD_EXCEL_MAGIC",
    "OLD_EXCEL_SUFFIX",
    "STREAMABLE_KINDS",
    "format_of",
    "kind_of_content",
    "upload_types",
]

Kind = Literal["text", "excel", "parquet"]


@dataclass(frozen=True)
class FileFormat:
    """One accepted suffix: the reader it goes to and, for text, the delimiter tried first."""

    suffix: str
    kind: Kind
    delimiter: str | None = None


#: Every suffix a table may have, in the order shown to users.
FORMATS: dict[str, FileFormat] = {
    f.suffix: f
    for f in (
        FileFormat(".csv", "text"),
        FileFormat(".tsv", "text", "\t"),
        FileFormat(".txt", "text"),
        FileFormat(".tab", "text", "\t"),
        FileFormat(".xlsx", "excel"),
        FileFormat(".xlsm", "excel"),
        FileFormat(".parquet", "parquet"),
        FileFormat(".pq", "parquet"),
    )
}

#: How each binary kind begins: a zip local-file header (Office Open XML is a zip package,
#: ECMA-376 Part 2) and Parquet's "PAR1" (the Apache Parquet file format specification).
MAGIC: dict[Kind, bytes] = {"excel": b"PK\x03\x04", "parquet": b"PAR1"}

#: Excel 97-2003 workbooks (and other legacy Office files) are OLE compound files.
OLD_EXCEL_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
OLD_EXCEL_SUFFIX = ".xls"

#: Kinds whose files can be read in chunks without holding the whole table.
STREAMABLE_KINDS: frozenset[Kind] = frozenset({"text", "parquet"})


def format_of(name: str | PurePath | None) -> FileFormat | None:
    """The registered format for a file name's suffix (case-insensitive), or None."""
    if not name:
        return None
    return FORMATS.get(PurePath(name).suffix.lower())


def kind_of_content(head: bytes) -> Kind | Literal["old-excel"]:
    """The kind the first bytes announce; anything without a known magic is text."""
    for kind, magic in MAGIC.items():
        if head.startswith(magic):
            return kind
    if head.startswith(OLD_EXCEL_MAGIC):
        return "old-excel"
    return "text"


def upload_types() -> list[str]:
    """Suffixes without the dot, as Streamlit's file_uploader takes them."""
    return [suffix.lstrip(".") for suffix in FORMATS]
