"""Starting a fit: progress lines on stderr, and one fit run by several processes.

The command line and `fit_parallel` share this; normcore.distributed only joins and
leaves process groups, so the model, the launcher and the CLI import each other in one
direction only (cli -> launch -> model -> distributed).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

from normcore import distributed
from normcore.model import NormativeModel
from normcore.safe_write import check_output
from normcore.schema import Schema, validate_training


def print_progress(p: dict) -> None:
    """One overwritten stderr line per progress event of `fit` or `adapt`."""
    if p["phase"] == "train":
        line = (
            f"training: epoch {p['epoch']}/{p['max_epochs']}  loss {p['loss']:.4f}  "
            f"val {p['val_loss']:.4f}  eta {p['eta_seconds']:.0f}s   "
        )
    elif p["phase"] == "adapt":
        line = f"adapting: step {p['step']}  loss {p['loss']:.4f}   "
    else:
        line = f"reference table: {100 * p['fraction']:.0f}%        "
    print(f"\r{line}", end="", file=sys.stderr, flush=True)


def fit_and_save(
    model: NormativeModel, df: pd.DataFrame, schema: Schema | None, out: str, verbose: bool
) -> None:
    """One process's share of a fit (the target `distributed.spawn` runs); rank 0 saves."""
    with distributed.session(model.device) as parallel:
        is_main = parallel is None or parallel.is_main
        model.fit(df, schema, progress=print_progress if verbose and is_main else None)
        if is_main:
            model.save(out)


def fit_parallel(
    model: NormativeModel,
    df: pd.DataFrame,
    schema: Schema | None = None,
    nproc: int = 2,
    out: str | os.PathLike | None = None,
    verbose: bool = False,
) -> NormativeModel:
    """Fit an unfitted `model` with `nproc` processes and return the fitted model.

    The table is validated here first, so a bad table is one DataError in this process
    rather than the same error in every worker. Rank 0 writes the bundle to `out` (a
    temporary file when None; checked writable before the fit starts), which is then
    loaded onto `model.device`.
    """
    schema = schema or Schema.infer(df)
    validate_training(df, schema).raise_for_errors()
    if out is not None:
        check_output(out)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(out) if out is not None else Path(tmp) / "model.normcore"
        distributed.spawn(nproc, fit_and_save, model, df, schema, str(path), verbose)
        return NormativeModel.load(path, device=model.device)
