"""Exceptions that carry a message meant for a person, not a stack trace, and `Problem`,
one finding about a table.

Every error a user can cause (a bad table, a bad model file) is one of these, so that the
CLI and the dashboard can show `str(err)` and nothing else. This module imports nothing
from normcore: every other module may raise these without an import cycle.

Row numbers are 0-based positions in the data (the `row` the CLI writes); a message also
gives the spreadsheet line, row + 2, for a file with one header line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

MAX_LISTED_ROWS = 10
"""How many row numbers a message lists before summarising the rest."""
HEADER_LINES = 2
"""Extra spreadsheet lines above the first data row (one header line, 1-based lines)."""


@dataclass(frozen=True)
class Problem:
    """One finding about a table: where it is and, in plain words, what to do about it."""

    severity: Literal["error", "warning"]
    column: str | None
    rows: tuple[int, ...]
    message: str

    def __str__(self) -> str:
        where = []
        if self.column is not None:
            where.append(f"column '{self.column}'")
        if self.rows:
            where.append(_describe_rows(self.rows))
        return f"{', '.join(where)}: {self.message}" if where else self.message


def _list_with_rest(items: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in items[:MAX_LISTED_ROWS])
    rest = len(items) - MAX_LISTED_ROWS
    return f"{shown} and {rest} more" if rest > 0 else shown


def _describe_rows(rows: Sequence[int]) -> str:
    """'row 3 (spreadsheet line 5)' or 'rows 3, 17 (spreadsheet lines 5, 19)'."""
    lines = [r + HEADER_LINES for r in rows]
    if len(rows) == 1:
        return f"row {rows[0]} (spreadsheet line {lines[0]})"
    return f"rows {_list_with_rest(rows)} (spreadsheet lines {_list_with_rest(lines)})"


class DataError(ValueError):
    """An input table that cannot be used as it is.

    `problems` lists each finding (column, rows, what to do); the message joins them so
    that printing the exception tells the whole story.
    """

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        self.problems = list(problems)
        lines = [message] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class BundleError(ValueError):
    """A model bundle that is unreadable, tampered with, or from an incompatible version."""


class NotFittedError(RuntimeError):
    """A model method that needs a fitted model was called before `fit` or `load`."""
