"""Output files: checked before any work starts, written whole or not at all.

`check_output` refuses an output path that cannot be written (a missing folder, a
read-only one), that is one of the command's inputs (the same file under another name
too: scoring a table into itself would destroy it), or that is not a regular file (a
device node, a FIFO, a directory): all before a fit that could take an hour.
`atomic_output` writes into a temporary file created exclusively in the target folder
(`tempfile.mkstemp`: a unique name, so two writers never share one) and renames it over
the target only when complete (`os.replace`, atomic on POSIX), so a crash, an error or
Ctrl-C never leaves half a file, and of two concurrent writers each leaves a whole file.
A new file is readable by its owner only (results hold clinical data); a file replaced
keeps its permissions.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["OutputError", "atomic_output", "check_output"]


class OutputError(OSError):
    """An output path normcore will not write to; the message says why."""


def check_output(
    path: str | os.PathLike,
    inputs: Sequence[str | os.PathLike] = (),
    directory: bool = False,
) -> Path:
    """`path` if it can be written and destroys nothing; else OutputError.

    `directory`: the output is a folder that will hold files (created if missing).
    """
    out = Path(path)
    if str(path).strip() == "":
        raise OutputError("The output path is empty.")
    for source in inputs:
        if _same_file(out, Path(source)):
            raise OutputError(
                f"The output '{out}' is the input '{source}': writing it would destroy the "
                "input. Choose another output name."
            )
    if os.path.lexists(out):
        mode = os.stat(out).st_mode if out.exists() else os.lstat(out).st_mode
        if directory and not stat.S_ISDIR(mode):
            raise OutputError(f"The output '{out}' exists and is not a folder.")
        if not directory and not stat.S_ISREG(mode):
            raise OutputError(
                f"The output '{out}' exists and is not a regular file (a folder, device or "
                "pipe); normcore will not replace it."
            )
    folder = out if directory and out.is_dir() else out.parent
    if not folder.is_dir():
        raise OutputError(f"The folder '{folder}' for the output does not exist.")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".normcore-", suffix=".probe")
    except OSError as err:
        raise OutputError(f"The folder '{folder}' cannot be written: {err.strerror}.") from err
    os.close(fd)
    os.unlink(probe)
    return out


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


@contextmanager
def atomic_output(path: str | os.PathLike, text: bool = False) -> Iterator[IO]:
    """An open file (binary, or UTF-8 text with `text`) that becomes `path` when the
    block ends without an error; on an error `path` is untouched and the file removed."""
    out = Path(path)
    _refuse_special(out)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    try:
        mode = "w" if text else "wb"
        with os.fdopen(fd, mode, **({"encoding": "utf-8", "newline": ""} if text else {})) as f:
            yield f
        if out.exists():
            os.chmod(tmp, stat.S_IMODE(os.stat(out).st_mode))
        _refuse_special(out)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _refuse_special(out: Path) -> None:
    if os.path.lexists(out) and not stat.S_ISREG(os.stat(out).st_mode if out.exists() else 0):
        raise OutputError(
            f"'{out}' exists and is not a regular file (a folder, device or pipe); "
            "normcore will not replace it."
        )
