"""Writing CSV that a spreadsheet opens as data, never as formulas.

Ids, site names and IDP names come from users' tables; a cell beginning with `=`, `+`,
`-` or `@` (or a tab or carriage return, which some spreadsheets skip before reading one
of those) is run as a formula when the CSV is opened in Excel or LibreOffice, and a
formula can fetch URLs or start programs ("CSV Injection", OWASP). Following OWASP's
advice, such a text cell is written with a single quote in front, which spreadsheets show
as text. Only text is touched: numeric columns are written as numbers, and a text cell
that is a plain number ('-3.5', '+2e3') is left alone, since it is not a formula.

Every CSV normcore writes from data goes through `to_csv_bytes` or `write_csv`.
"""

from __future__ import annotations

import os
import re
from typing import IO, Any

import pandas as pd

__all__ = ["FORMULA_PREFIXES", "neutralise_formulas", "safe_cell", "to_csv_bytes", "write_csv"]

#: Characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """The value as a spreadsheet should show it: formula-leading text quoted, else as is."""
    if (
        isinstance(value, str)
        and value.startswith(FORMULA_PREFIXES)
        and not _PLAIN_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def neutralise_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of `df` whose text cells and column names cannot run as formulas.

    Numeric, boolean and date columns are shared with `df`, not copied.
    """
    out = df.copy(deep=False)
    for position in range(out.shape[1]):
        column = out.iloc[:, position]
        if (
            pd.api.types.is_numeric_dtype(column)
            or pd.api.types.is_bool_dtype(column)
            or pd.api.types.is_datetime64_any_dtype(column)
        ):
            continue
        out.isetitem(position, _neutralise_column(column))
    out.columns = [safe_cell(name) for name in out.columns]
    return out


def _neutralise_column(column: pd.Series) -> pd.Series:
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.map(safe_cell)  # maps the categories, not every cell
    if isinstance(column.dtype, pd.StringDtype):  # vectorised: score tables run to millions
        risky = column.str.startswith(FORMULA_PREFIXES, na=False)
        if not risky.any():
            return column
        risky[risky] = ~column[risky].str.fullmatch(_PLAIN_NUMBER.pattern, na=False)
        return column.mask(risky, "'" + column)
    return column.map(safe_cell)


def write_csv(
    df: pd.DataFrame, target: str | os.PathLike[str] | IO[str], header: bool = True
) -> None:
    """Write `df` as CSV (no index) to a path or an open text file, formulas neutralised."""
    neutralise_formulas(df).to_csv(target, header=header, index=False)


def to_csv_bytes(df: pd.DataFrame) -> bytes:
    """`df` as UTF-8 CSV bytes (no index), formulas neutralised: for downloads."""
    return neutralise_formulas(df).to_csv(index=False).encode("utf-8")
