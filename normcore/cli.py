"""Command line: `python -m normcore {fit,score,centiles,sample,evaluate,adapt,info,sign,keygen}`.

The argument and output formats are a contract other tools rely on (see README). Results
go to the files named by --out, checked before any work starts (writable, not an input,
not a device or folder) and written whole or not at all (normcore.safe_write); CSVs are
written formula-safe (normcore.export). Progress and warnings go to stderr; any user
error, a bad flag included, is one readable message on stderr with exit status 2.

The parser is built from light modules only (argparse, normcore.options, normcore.errors);
what the commands do lives in normcore.commands, imported once a command is to run, so
`normcore --help` never waits for torch, pandas or scipy to load.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from normcore.errors import BundleError, DataError, NotFittedError
from normcore.options import BACKBONES, DEFAULT_QUANTILES, DEVICES, KEY_ENV
from normcore.safe_write import check_output


# ------------------------------------------------------------------- flag types
def name_list(text: str) -> list[str] | None:
    """Comma-separated column names; none given (an empty text) means the default."""
    return [t.strip() for t in text.split(",") if t.strip()] or None


def _whole_number(text: str, lowest: int, rule: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"must be {rule}, not {value}")
    return value


def count(text: str) -> int:
    """A whole number of at least 1 (epochs, draws, steps, rows, processes)."""
    return _whole_number(text, 1, "at least 1")


def seed(text: str) -> int:
    """A whole number of at least 0 (random seeds)."""
    return _whole_number(text, 0, "0 or more")


def quantile_list(text: str) -> list[float]:
    """Comma-separated probabilities, each a finite number strictly between 0 and 1."""
    values = []
    for item in name_list(text) or []:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normcore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit a model to a reference table")
    p.add_argument("table")
    p.add_argument("--out", required=True, help="model file to write")
    p.add_argument("--backbone", choices=BACKBONES, default=BACKBONES[0])
    p.add_argument(
        "--covariates",
        type=name_list,
        help="age column first, then categorical ones (default: age,sex,site present)",
    )
    p.add_argument(
        "--idps",
        type=name_list,
        help="comma-separated IDP columns (default: all other numeric columns)",
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
        "--gaussian-prior",
        action="store_true",
        help="the denoiser corrects an age-dependent Gaussian prior: better conditional "
        "centiles (--given) and joint draws, at a longer fit; see the README before using "
        "the multivariate deviation of such a model at many IDPs",
    )
    p.add_argument(
        "--nproc",
        type=count,
        default=1,
        help="training processes on this machine (DistributedDataParallel; gloo on CPUs, "
        "NCCL on GPUs); under torchrun, torchrun's own count is used",
    )
    p.set_defaults(inputs=("table",))

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
        type=name_list,
        metavar="IDP,IDP,...",
        help="score every other IDP given the covariates and these IDPs' values "
        "(conditional centiles; the table is then scored in one piece)",
    )
    p.set_defaults(inputs=("model", "table"))

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
    p.set_defaults(inputs=("model", "grid"))

    p = sub.add_parser("sample", help="draw IDP vectors at each grid row's covariates")
    p.add_argument("model")
    p.add_argument("grid")
    p.add_argument("--n", type=count, default=100, help="draws per grid row, at least 1")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(inputs=("model", "grid"))

    p = sub.add_parser("evaluate", help="calibration and dependence report on a held-out table")
    p.add_argument("model")
    p.add_argument("table")
    p.add_argument("--out", required=True, help="directory for metrics.json and report.html")
    p.set_defaults(inputs=("model", "table"), out_is_folder=True)

    p = sub.add_parser("adapt", help="adapt a model to a new site from its healthy controls")
    p.add_argument("model")
    p.add_argument("table", help="controls from one site")
    p.add_argument("--out", required=True, help="adapted model file to write")
    p.add_argument("--site", help="site name (default: the table's site column)")
    p.add_argument("--steps", type=count, default=400, help="learning steps, at least 1")
    p.set_defaults(inputs=("model", "table"))

    p = sub.add_parser("info", help="a model's fingerprint, signature and provenance")
    p.add_argument("model")

    p = sub.add_parser("sign", help="sign a model file with a key you hold (HMAC-SHA256)")
    p.add_argument("model")
    p.add_argument("--out", help="signed model file to write (default: the model, in place)")
    p.set_defaults(inputs=())

    p = sub.add_parser("keygen", help="write a new random signing key to a file")
    p.add_argument("keyfile")

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
            f"its signature (default: the file named by {KEY_ENV})",
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
        from normcore.provenance import read_key  # numpy and pandas: only with a key

        read_key(args.key)
        # Every load, save and torchrun worker of this command reads it from here.
        os.environ[KEY_ENV] = str(Path(args.key).resolve())
    out = getattr(args, "out", None)
    if out is not None:
        inputs = [getattr(args, name) for name in getattr(args, "inputs", ())]
        check_output(out, inputs, directory=getattr(args, "out_is_folder", False))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from normcore.commands import RUN  # pandas and most often torch: only for a command

    key_before = os.environ.get(KEY_ENV)
    try:
        _prepare(args)
        RUN[args.command](args)
    except (DataError, BundleError, NotFittedError, ValueError, OSError) as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    finally:
        # `--key` holds for this command only, also when main() is called in-process.
        if key_before is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = key_before
    return 0
