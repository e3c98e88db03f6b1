"""Command line: `python -m normcore {fit,score,centiles,sample,evaluate,adapt}`.

The argument and output formats are a contract other tools rely on (see README). Results
go to the files named by --out; progress and warnings go to stderr; any user error is one
readable message on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from normcore import distributed, stream
from normcore.data import read_table
from normcore.denoisers import BACKBONES
from normcore.device import DEVICES
from normcore.errors import BundleError, DataError, NotFittedError
from normcore.launch import print_progress
from normcore.model import DEFAULT_QUANTILES, NormativeModel
from normcore.schema import Schema, validate_training
from normcore.site_advice import adaptation_warnings


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _warn(model: NormativeModel, df: pd.DataFrame) -> None:
    for problem in model.check(df).warnings:
        print(f"warning: {problem}", file=sys.stderr)


def _schema(
    df: pd.DataFrame, covariates: list[str] | None, idps: list[str] | None, id_col: str | None
) -> Schema:
    if covariates:
        age, *categorical = covariates
        return Schema.infer(df, age=age, categorical=categorical, idps=idps, id=id_col)
    return Schema.infer(df, idps=idps, id=id_col)


def cmd_fit(args: argparse.Namespace) -> None:
    df = read_table(args.table)
    schema = _schema(df, _split(args.covariates), _split(args.idps), args.id)
    if args.nproc > 1 and not distributed.launched():
        # Check the table once here; each worker then runs this command under torchrun's
        # environment variables and takes the branch below.
        validate_training(df, schema).raise_for_errors()
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
            backbone=args.backbone, max_epochs=args.epochs, seed=args.seed, device=args.device
        )
        model.fit(df, schema, progress=print_progress if is_main else None)
        if is_main:
            print(file=sys.stderr)
            model.save(args.out)
            print(f"saved {args.out} (fit {model.fit_seconds:.0f}s)", file=sys.stderr)


def _score_progress(done: int, total: int) -> None:
    print(f"\rscoring: {done:,} / ~{total:,} rows   ", end="", file=sys.stderr, flush=True)


def cmd_score(args: argparse.Namespace) -> None:
    model = NormativeModel.load(args.model, device=args.device)
    given = _split(args.given)
    streamed = stream.streamable(args.table) and stream.count_rows(args.table) > args.chunk_rows
    if given is None and streamed:
        summary = stream.score_file(
            model, args.table, args.out, chunk_rows=args.chunk_rows, progress=_score_progress
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
    df = read_table(args.table)
    _warn(model, df)
    model.score(df, given=given).to_csv(args.out, index=False)
    print(f"scored {len(df)} rows x {len(model.idps)} IDPs -> {args.out}", file=sys.stderr)


def cmd_centiles(args: argparse.Namespace) -> None:
    model = NormativeModel.load(args.model, device=args.device)
    grid = read_table(args.grid)
    quantiles = [float(q) for q in _split(args.quantiles) or DEFAULT_QUANTILES]
    _warn_grid(model, grid)
    model.centiles(grid, quantiles).to_csv(args.out, index=False)
    print(f"centiles at {len(grid)} grid rows -> {args.out}", file=sys.stderr)


def cmd_sample(args: argparse.Namespace) -> None:
    model = NormativeModel.load(args.model, device=args.device)
    grid = read_table(args.grid)
    _warn_grid(model, grid)
    start = time.perf_counter()
    samples = model.sample(grid, args.n, seed=args.seed).drop(columns="grid_row")
    samples.to_csv(args.out, index=False)
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
    df = read_table(args.table)
    _warn(model, df)
    result = evaluate(model, df)
    write_report(result, Path(args.out))
    print(f"wrote {args.out}/metrics.json and {args.out}/report.html", file=sys.stderr)


def cmd_adapt(args: argparse.Namespace) -> None:
    model = NormativeModel.load(args.model, device=args.device)
    controls = read_table(args.table)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normcore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit a model to a reference table")
    p.add_argument("table")
    p.add_argument("--out", required=True, help="model file to write")
    p.add_argument("--backbone", choices=BACKBONES, default=BACKBONES[0])
    p.add_argument(
        "--covariates",
        help="age column first, then categorical ones (default: age,sex,site present)",
    )
    p.add_argument(
        "--idps", help="comma-separated IDP columns (default: all other numeric columns)"
    )
    p.add_argument("--id", help="subject id column (default: detected)")
    p.add_argument(
        "--epochs", type=int, help="maximum passes over the data (default: until early stopping)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="training processes on this machine (DistributedDataParallel; gloo on CPUs, "
        "NCCL on GPUs); under torchrun, torchrun's own count is used",
    )
    p.set_defaults(run=cmd_fit)

    p = sub.add_parser("score", help="centiles and z-scores of every person and IDP")
    p.add_argument("model")
    p.add_argument("table")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=10_000,
        help="CSV/Parquet files with more rows are scored in chunks of this many "
        "(bounded memory, same output)",
    )
    p.add_argument(
        "--given",
        metavar="IDP,IDP,...",
        help="score every other IDP given the covariates and these IDPs' values "
        "(conditional centiles; the table is then scored in one piece)",
    )
    p.set_defaults(run=cmd_score)

    p = sub.add_parser("centiles", help="model quantiles over a covariate grid")
    p.add_argument("model")
    p.add_argument("grid")
    p.add_argument("--quantiles", default=",".join(map(str, DEFAULT_QUANTILES)))
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_centiles)

    p = sub.add_parser("sample", help="draw IDP vectors at each grid row's covariates")
    p.add_argument("model")
    p.add_argument("grid")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_sample)

    p = sub.add_parser("evaluate", help="calibration and dependence report on a held-out table")
    p.add_argument("model")
    p.add_argument("table")
    p.add_argument("--out", required=True, help="directory for metrics.json and report.html")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("adapt", help="adapt a model to a new site from its healthy controls")
    p.add_argument("model")
    p.add_argument("table", help="controls from one site")
    p.add_argument("--out", required=True, help="adapted model file to write")
    p.add_argument("--site", help="site name (default: the table's site column)")
    p.add_argument("--steps", type=int, default=400)
    p.set_defaults(run=cmd_adapt)

    for sub_parser in sub.choices.values():
        sub_parser.add_argument(
            "--device",
            choices=DEVICES,
            default="auto",
            help="where the network runs: auto (a GPU when torch sees one), cpu or cuda",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (DataError, BundleError, NotFittedError, ValueError, OSError) as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    return 0
