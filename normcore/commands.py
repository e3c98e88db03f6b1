"""What each command of the command line does (`normcore.cli` parses the arguments).

Kept apart from the parser because these need pandas and the model: `normcore.cli`
imports this module only once a command is to run, so `--help` and a mistyped flag answer
at once. Torch is imported only by the commands that train or draw (fit, sample, adapt,
and scoring given IDPs or with IDPs missing), inside them: scoring a complete table from
a model's reference table never loads it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from normcore import bundle, provenance, stream
from normcore.data import read_table
from normcore.demo import MODEL_PATH as DEMO_MODEL_PATH
from normcore.errors import DataError
from normcore.explore import sex_level_meanings
from normcore.export import write_csv
from normcore.model import NormativeModel
from normcore.safe_write import atomic_output
from normcore.schema import Schema, parse_coding, recode, validate_training
from normcore.site_advice import adaptation_warnings


def _write_csv(df: pd.DataFrame, out: str) -> None:
    """`df` to `out`, formula-safe, whole or not at all."""
    with atomic_output(out, text=True) as f:
        write_csv(df, f)


def _warn(model: NormativeModel, df: pd.DataFrame) -> None:
    for problem in model.check(df).warnings:
        print(f"warning: {problem}", file=sys.stderr)


def _recoded(model: NormativeModel, df: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """The table's category codes as the model's levels, from --sex-coding and --coding;
    the sex column's codes must be the model's own levels or be given, never guessed."""
    categorical = model.schema.categorical
    sex = next((c for c in categorical if c.lower() == "sex"), None)
    codings = {}
    for spec in args.coding or ():
        column, sep, text = spec.partition(":")
        if not sep or column.strip() not in categorical:
            raise DataError(
                f"--coding '{spec}': write COLUMN:CODE=LEVEL,... with COLUMN one of the "
                f"model's categorical covariates ({', '.join(categorical) or 'none'})."
            )
        codings[column.strip()] = parse_coding(text)
    if args.sex_coding:
        if sex is None:
            raise DataError("--sex-coding: this model has no 'sex' covariate.")
        codings[sex] = parse_coding(args.sex_coding)
    demo = Path(args.model).resolve() == DEMO_MODEL_PATH.resolve()
    levels = model.levels
    for column in categorical:
        if column in codings or column == sex:
            meanings = sex_level_meanings(levels[column], demo) if column == sex else {}
            how = (
                "--sex-coding 1=male,2=female"
                if column == sex
                else (f"--coding {column}:CODE=LEVEL,...")
            )
            df = recode(df, column, codings.get(column), levels[column], meanings, how)
    return df


def _schema(
    df: pd.DataFrame, covariates: list[str] | None, idps: list[str] | None, id_col: str | None
) -> Schema:
    if covariates:
        age, *categorical = covariates
        return Schema.infer(df, age=age, categorical=categorical, idps=idps, id=id_col)
    return Schema.infer(df, idps=idps, id=id_col)


def cmd_fit(args: argparse.Namespace) -> None:
    from normcore import distributed
    from normcore.launch import print_progress

    df = read_table(args.table)
    schema = _schema(df, args.covariates, args.idps, args.id)
    report = validate_training(df, schema, args.keep_outliers)
    if not distributed.launched():
        for problem in report.warnings:  # columns left out, outliers kept: said once
            print(f"warning: {problem}", file=sys.stderr)
    if args.nproc > 1 and not distributed.launched():
        # Check the table once here; each worker then runs this command under torchrun's
        # environment variables and takes the branch below.
        report.raise_for_errors()
        print(f"starting {args.nproc} training processes", file=sys.stderr)
        distributed.spawn(args.nproc, cmd_fit, args)
        seconds = NormativeModel.load(args.out, device="cpu").fit_seconds
        print(f"saved {args.out} (fit {seconds:.0f}s)", file=sys.stderr)
        return
    with distributed.session(args.device) as parallel:
        is_main = parallel is None or parallel.is_main
        if is_main:
            print(
                f"fitting {args.backbone} on {len(df)} rows: age '{schema.age}', "
                f"categorical {list(schema.categorical)}, {len(schema.idps)} IDPs",
                file=sys.stderr,
            )
        model = NormativeModel(
            backbone=args.backbone, max_epochs=args.epochs, seed=args.seed, device=args.device,
            gaussian_prior=args.gaussian_prior,
        )
        model.fit(
            df, schema, progress=print_progress if is_main else None,
            keep_outliers=args.keep_outliers,
        )  # fmt: skip
        if is_main:
            print(file=sys.stderr)
            model.save(args.out)
            print(f"saved {args.out} (fit {model.fit_seconds:.0f}s)", file=sys.stderr)


def _score_progress(done: int, total: int) -> None:
    print(f"\rscoring: {done:,} / ~{total:,} rows   ", end="", file=sys.stderr, flush=True)


def _scoring_table(model: NormativeModel, args: argparse.Namespace) -> pd.DataFrame:
    """The table `score` reads: a plain table, or FreeSurfer outputs (a folder or zip of
    subjects' stats files, a .stats file, an *stats2table table) joined with
    --covariates-table on the subject id and matched to the model's IDPs by region (the
    match is printed). The id column is found as the dashboard finds it
    (`explore.guess_id_column`), so `participant_id` is carried into the results."""
    from normcore.explore import guess_id_column, join_covariates
    from normcore.freesurfer import apply_matching, is_freesurfer, match_columns, read_freesurfer

    path = Path(args.table)
    head = path.open("rb").read(4096) if path.is_file() else b""
    if path.is_dir() or is_freesurfer(path.name, head):
        df = read_freesurfer(path)
        if args.covariates_table:
            df, notes = join_covariates(df, read_table(args.covariates_table))
            for note in notes:
                print(f"warning: {note}", file=sys.stderr)
        matching = match_columns(df, model.idps)
        print(matching.message, file=sys.stderr)
        df = apply_matching(df, matching)
    else:
        df = read_table(args.table)
    own = model.schema.id
    found = guess_id_column(df.columns, own)
    if own and found and own not in df.columns:
        df = df.rename(columns={found: own})
    return df


def cmd_score(args: argparse.Namespace) -> None:
    model = NormativeModel.load(args.model, device=args.device)
    given = args.given
    streamed = stream.streamable(args.table) and stream.count_rows(args.table) > args.chunk_rows
    if given is None and streamed:
        summary = stream.score_file(
            model,
            args.table,
            args.out,
            chunk_rows=args.chunk_rows,
            progress=_score_progress,
            prepare=lambda chunk: _recoded(model, chunk, args),
        )
        print(file=sys.stderr)
        for problem in summary.warnings:
            print(f"warning: {problem}", file=sys.stderr)
        print(
            f"scored {summary.rows} rows x {len(model.idps)} IDPs in {summary.chunks} chunks "
            f"-> {args.out}",
            file=sys.stderr,
        )
        return
    df = _recoded(model, _scoring_table(model, args), args)
    _warn(model, df)
    _write_csv(model.score(df, given=given), args.out)
    print(f"scored {len(df)} rows x {len(model.idps)} IDPs -> {args.out}", file=sys.stderr)


def cmd_centiles(args: argparse.Namespace) -> None:
    model = NormativeModel.load(args.model, device=args.device)
    grid = _recoded(model, read_table(args.grid), args)
    _warn_grid(model, grid)
    _write_csv(model.centiles(grid, args.quantiles), args.out)
    print(f"centiles at {len(grid)} grid rows -> {args.out}", file=sys.stderr)


def cmd_sample(args: argparse.Namespace) -> None:
    model = NormativeModel.load(args.model, device=args.device)
    grid = _recoded(model, read_table(args.grid), args)
    _warn_grid(model, grid)
    start = time.perf_counter()
    samples = model.sample(grid, args.n, seed=args.seed).drop(columns="grid_row")
    _write_csv(samples, args.out)
    print(
        f"{len(samples)} samples in {time.perf_counter() - start:.1f}s -> {args.out}",
        file=sys.stderr,
    )


def _warn_grid(model: NormativeModel, grid: pd.DataFrame) -> None:
    """Grids carry covariates only: check those, not IDP columns."""
    if model.schema.age not in grid.columns:
        return
    lo, hi = model.age_range
    ages = pd.to_numeric(grid[model.schema.age], errors="coerce")
    if ((ages < lo) | (ages > hi)).any():
        print(
            f"warning: some grid ages lie outside the training range {lo:g}-{hi:g} (extrapolated)",
            file=sys.stderr,
        )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from normcore.evaluate import evaluate
    from normcore.report import write_report

    model = NormativeModel.load(args.model, device=args.device)
    df = _recoded(model, read_table(args.table), args)
    _warn(model, df)
    result = evaluate(model, df)
    write_report(result, Path(args.out))
    print(f"wrote {args.out}/metrics.json and {args.out}/report.html", file=sys.stderr)


def cmd_adapt(args: argparse.Namespace) -> None:
    from normcore.launch import print_progress

    model = NormativeModel.load(args.model, device=args.device)
    controls = _recoded(model, read_table(args.table), args)
    adapted = model.adapt(controls, site=args.site, steps=args.steps, progress=print_progress)
    print(file=sys.stderr)
    record = adapted.adaptations[-1]
    for warning in adaptation_warnings(record):
        print(f"warning: {warning}", file=sys.stderr)
    adapted.save(args.out)
    verb = "re-adapted" if record["readapted"] else "adapted"
    print(
        f"{verb} to site '{record['level']}' from {record['n_controls']} controls -> {args.out}",
        file=sys.stderr,
    )


def cmd_info(args: argparse.Namespace) -> None:
    """Where a model came from, to compare with what its provider published."""
    data = bundle.read(args.model)
    model = NormativeModel.from_bytes(data, device="cpu")  # every check a load makes
    origin = bundle.origin(data)
    training = model.training_summary
    lo, hi = model.age_range
    sites = training["level_counts"].get("site", {})
    lines = {
        "fingerprint (SHA-256)": origin.fingerprint,
        "signature": origin.signature_text,
        "created": origin.created,
        "normcore version": origin.normcore_version,
        "trained on": f"{training['n']} people, ages {lo:g}-{hi:g}, {len(sites)} sites",
        "training table SHA-256": training.get("table_sha256", "not recorded"),
        "covariates": ", ".join(model.schema.covariates),
        "IDPs": str(len(model.idps)),
        "backbone": model.config.backbone,
        "adapted sites": ", ".join(str(a["level"]) for a in model.adaptations) or "none",
    }
    width = max(map(len, lines))
    for name, value in lines.items():
        print(f"{name:<{width}}  {value}")


def cmd_sign(args: argparse.Namespace) -> None:
    """Sign a model file (in place, or into --out) with the key in --key."""
    key = provenance.read_key(args.key)
    signed = bundle.sign(bundle.read(args.model), key)
    out = args.out or args.model
    bundle.write(out, signed)
    print(f"signed {args.model} -> {out}", file=sys.stderr)


def cmd_keygen(args: argparse.Namespace) -> None:
    """A new random key in a file readable by its owner only; never overwrites one."""
    try:
        fd = os.open(args.keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DataError(f"'{args.keyfile}' exists already; a key is never overwritten.") from None
    with os.fdopen(fd, "w") as f:
        f.write(provenance.new_key_text())
    print(
        f"wrote a new key to {args.keyfile}: keep it private; sign with "
        f"`normcore sign MODEL --key {args.keyfile}`",
        file=sys.stderr,
    )


RUN: dict[str, Callable[[argparse.Namespace], None]] = {
    "fit": cmd_fit,
    "score": cmd_score,
    "centiles": cmd_centiles,
    "sample": cmd_sample,
    "evaluate": cmd_evaluate,
    "adapt": cmd_adapt,
    "info": cmd_info,
    "sign": cmd_sign,
    "keygen": cmd_keygen,
}
"""The function that runs each subcommand of `normcore.cli.build_parser`."""
