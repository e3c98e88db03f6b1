"""Exceptions that carry a message meant for a person, not a stack trace.

Every error a user can cause (a bad table, a bad model file) is one of these, so that the
CLI and the dashboard can show `str(err)` and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - import only for type checkers
    from normcore.schema import Problem


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
