"""Command line: `python -m normcore {fit,score,centiles,sample,evaluate,adapt,info,sign,keygen}`.

The argument and output formats are a contract other tools rely on (see README). Results
go to the files named by --out, checked before any work starts (writable, not an input,
not a device or folder) and written whole or not at all (normcore.safe_write); CSVs are
written formula-safe (normcore.export). Progress and warnings go to stderr; any user
error, a bad flag included, is one readable message on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from normcore import bundle, distributed, provenance, stream
from normcore.data import read_table
from normcore.demo import MODEL_PATH as DEMO_MODEL_PATH
from normcore.denoisers import BACKBONES
from normcore.device import DEVICES
from normcore.errors import BundleError, DataError, NotFittedError
from normcore.explore import sex_level_meanings
from normcore.export import write_csv
from normcore.launch import print_progress
from normcore.model import DEFAULT_QUANTILES, NormativeModel
from normcore.safe_write import atomic_output, check_output
from normcore.schema import Schema, parse_coding, recode, validate_training
from normcore.site_advice import adaptation_warnings


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


# ------------------------------------------------------------------- flag types
def count(text: str) -> int:
    """A whole number of at least 1 (epochs, draws, steps, rows, processes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def seed(text: str) -> int:
    """A whole number of at least 0 (random seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def quantile_list(text: str) -> list[float]:
    """Comma-separated probabilities, each a finite number strictly between 0 and 1."""
    values = []
    for item in _split(text) or []:
        try:
            q = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{item}' is not a number") from None
        if not (math.isfinite(q) and 0.0 < q < 1.0):
            raise argparse.ArgumentTypeError(
                f"'{item}' is not a probability strictly between 0 and 1 (e.g. 0.05)"
            )
        values.append(q)
    if not values:
        raise argparse.ArgumentTypeError("give at least one probability, e.g. 0.05,0.5,0.95")
    return values


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
            how = "--sex-coding 1=male,2=female" if column == sex else (
                f"--coding {column}:CODE=LEVEL,..."
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
    df = read_table(args.table)
    schema = _schema(df, _split(args.covariates), _split(args.idps), args.id)
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
            backbone=args.backbone, max_epochs=args.epochs, seed=args.seed, device=args.device
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
    given = _split(args.given)
    streamed = stream.streamable(args.table) and stream.count_rows(args.table) > args.chunk_rows
    if given is None and streamed:
        summary = stream.score_file(
            model, args.table, args.out, chunk_rows=args.chunk_rows, progress=_score_progress,
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
        "--keep-outliers",
        action="store_true",
        help="train on values the plausibility checks refuse (zero or negative volumes, "
        "gross outliers) because you know them to be real; they are listed as warnings",
    )
    p.add_argument(
        "--epochs",
        type=count,
        help="maximum passes over the data, at least 1 (default: until early stopping)",
    )
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument(
        "--nproc",
        type=count,
        default=1,
        help="training processes on this machine (DistributedDataParallel; gloo on CPUs, "
        "NCCL on GPUs); under torchrun, torchrun's own count is used",
    )
    p.set_defaults(run=cmd_fit, inputs=("table",))

    p = sub.add_parser("score", help="centiles and z-scores of every person and IDP")
    p.add_argument("model")
    p.add_argument("table")
    p.add_argument(
        "--covariates-table",
        help="for FreeSurfer outputs (a folder or zip of subjects' stats files): a table of "
        "each subject's age, sex and site, joined on the subject id",
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--chunk-rows",
        type=count,
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
    p.set_defaults(run=cmd_score, inputs=("model", "table"))

    p = sub.add_parser("centiles", help="model quantiles over a covariate grid")
    p.add_argument("model")
    p.add_argument("grid")
    p.add_argument(
        "--quantiles",
        type=quantile_list,
        default=list(DEFAULT_QUANTILES),
        help="comma-separated probabilities strictly between 0 and 1",
    )
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_centiles, inputs=("model", "grid"))

    p = sub.add_parser("sample", help="draw IDP vectors at each grid row's covariates")
    p.add_argument("model")
    p.add_argument("grid")
    p.add_argument("--n", type=count, default=100, help="draws per grid row, at least 1")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_sample, inputs=("model", "grid"))

    p = sub.add_parser("evaluate", help="calibration and dependence report on a held-out table")
    p.add_argument("model")
    p.add_argument("table")
    p.add_argument("--out", required=True, help="directory for metrics.json and report.html")
    p.set_defaults(run=cmd_evaluate, inputs=("model", "table"), out_is_folder=True)

    p = sub.add_parser("adapt", help="adapt a model to a new site from its healthy controls")
    p.add_argument("model")
    p.add_argument("table", help="controls from one site")
    p.add_argument("--out", required=True, help="adapted model file to write")
    p.add_argument("--site", help="site name (default: the table's site column)")
    p.add_argument("--steps", type=count, default=400, help="learning steps, at least 1")
    p.set_defaults(run=cmd_adapt, inputs=("model", "table"))

    p = sub.add_parser("info", help="a model's fingerprint, signature and provenance")
    p.add_argument("model")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("sign", help="sign a model file with a key you hold (HMAC-SHA256)")
    p.add_argument("model")
    p.add_argument("--out", help="signed model file to write (default: the model, in place)")
    p.set_defaults(run=cmd_sign, inputs=())

    p = sub.add_parser("keygen", help="write a new random signing key to a file")
    p.add_argument("keyfile")
    p.set_defaults(run=cmd_keygen)

    for name in ("score", "centiles", "sample", "evaluate", "adapt"):
        sub.choices[name].add_argument(
            "--sex-coding",
            metavar="CODE=LEVEL,...",
            help="what each code of the table's sex column means, e.g. 1=male,2=female "
            "(the model's levels or their meanings); without it every code must be one of "
            "the model's levels",
        )
        sub.choices[name].add_argument(
            "--coding",
            action="append",
            metavar="COLUMN:CODE=LEVEL,...",
            help="the same for any categorical covariate (repeatable); every code of "
            "COLUMN must then be given",
        )
    for name, sub_parser in sub.choices.items():
        if name == "keygen":
            continue
        sub_parser.add_argument(
            "--key",
            required=name == "sign",
            help="key file: models written are signed with it and models read must carry "
            f"its signature (default: the file named by {provenance.KEY_ENV})",
        )
        if name != "sign":
            sub_parser.add_argument(
                "--device",
                choices=DEVICES,
                default="auto",
                help="where the network runs: auto (a GPU when torch sees one), cpu or cuda",
            )
    return parser


def _prepare(args: argparse.Namespace) -> None:
    """Before any work: the key is readable, and --out can be written without destroying
    an input or a non-regular file."""
    if getattr(args, "key", None):
        provenance.read_key(args.key)
        # Every load, save and torchrun worker of this command reads it from here.
        os.environ[provenance.KEY_ENV] = str(Path(args.key).resolve())
    out = getattr(args, "out", None)
    if out is not None:
        inputs = [getattr(args, name) for name in getattr(args, "inputs", ())]
        check_output(out, inputs, directory=getattr(args, "out_is_folder", False))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    key_before = os.environ.get(provenance.KEY_ENV)
    try:
        _prepare(args)
        args.run(args)
    except (DataError, BundleError, NotFittedError, ValueError, OSError) as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    finally:
        # `--key` holds for this command only, also when main() is called in-process.
        if key_before is None:
            os.environ.pop(provenance.KEY_ENV, None)
        else:
            os.environ[provenance.KEY_ENV] = key_before
    return 0
