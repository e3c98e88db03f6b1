"""Side-by-side benchmark (issue 3 point 4): normcore (FiLM-MLP, SAINT) against
PCNtoolkit BLR / HBR and GAMLSS fitted per IDP, and a Gaussian copula over the best
peer's z-scores as the joint baseline, on synthetic data with known truth (2, 20, 100,
200 IDPs) and on fcon1000 (site-stratified 50/50 split).

Why: a user choosing a normative model needs calibration and dependence numbers for
every candidate on the same split, computed by the same metric functions. Peers run
in their own venv through peers.py (which writes per-person centiles); every number is
computed here from centiles and z-scores with `normcore.metrics`.

    python benchmarks/compare.py [--datasets synth2,synth20,fcon,synth100,synth200]
    BENCH_QUICK=1 python benchmarks/compare.py      # tiny end-to-end check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import common
import numpy as np
import pandas as pd
from common import QUICK, log
from scipy import stats

from normcore import metrics
from normcore.data import split_table
from normcore.demo import IDPS as DEMO_IDPS
from normcore.denoisers import BACKBONES as NORMCORE
from normcore.schema import Schema
from normcore.synthetic import SyntheticSpec, idp_names, simulate, true_cdf

N_TRAIN, N_TEST = (300, 200) if QUICK else (3000, 1000)
TRAIN_SEED, TEST_SEED = 1, 2
SYNTH_DIMS = {"synth2": 2, "synth20": 20, "synth100": 100, "synth200": 200}
if QUICK:
    SYNTH_DIMS = {"synth2": 2, "synth20": 5, "synth100": 8, "synth200": 12}
FCON_EXCLUDED_SITES = ("NewYork_a_ADHD",)
FCON_QC_COLUMNS = ("avg_en", "SurfaceHoles", "lhSurfaceHoles", "rhSurfaceHoles")
"""Quality-control counts (Euler number, holes), not brain measures: not modelled."""
PEER_NAMES = {"blr": "PCNtoolkit BLR", "hbr": "PCNtoolkit HBR", "gamlss": "gamlss"}
"""--models name -> the model's name in result rows."""
PEERS = tuple(PEER_NAMES)
PEER_KEYS = {name: key for key, name in PEER_NAMES.items()}
ROW_ORDER = (*(f"normcore {b}" for b in NORMCORE), *PEER_NAMES.values())
RAN = f"{time.strftime('%Y-%m-%d', time.gmtime())} {common.CODE_AT_START.split(' ')[0]}"
"""Stamped on every row: with `--append` a table can mix rows of several runs."""


def _model_key(row: dict) -> str:
    """The --models name that produced a result row ("copula" for the peers' copula)."""
    name = row["model"]
    if name.startswith("normcore "):
        return name.removeprefix("normcore ")
    if name.startswith("Gaussian copula"):
        return "copula"
    return PEER_KEYS[name]


DEPENDENCE_SEED = 7
HBR_SKIPPED = (
    "not run: HBR (NUTS via nutpie, 2 chains, 500 tune + 500 draws) takes ~3-5 min per IDP "
    "at 1,000-3,000 rows on this CPU; run only on the datasets in --hbr-datasets"
)


@dataclass
class Dataset:
    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    schema: Schema
    spec: SyntheticSpec | None
    note: str
    dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir = common.OUT / "compare" / self.name
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def idps(self) -> list[str]:
        return list(self.schema.idps)


def synthetic(name: str, n_train: int) -> Dataset:
    spec = SyntheticSpec(n_idps=SYNTH_DIMS[name])
    train = simulate(spec, n_train, seed=TRAIN_SEED)
    test = simulate(spec, N_TEST, seed=TEST_SEED)
    schema = Schema("age", ("sex", "site"), tuple(idp_names(spec)), "subject_id")
    note = f"synthetic, {spec.n_idps} IDPs, train {n_train} / test {N_TEST}"
    return Dataset(name, train, test, schema, spec, note)


def fcon(idp_set: str) -> Dataset:
    """fcon1000 without NewYork_a_ADHD, site-stratified 50/50 split (split_table seed 0).

    idp_set "all": every non-constant numeric column except the QC counts; "demo": the
    47 IDPs of normcore/demo.py."""
    df = common.fcon_table()
    df = df[~df["site"].isin(FCON_EXCLUDED_SITES)].reset_index(drop=True)
    df["sex"] = df["sex"].astype(str)
    skip = {"sub_id", "age", "sex", "site", *FCON_QC_COLUMNS}
    numeric = [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]
    idps = [c for c in numeric if df[c].nunique() > 1]
    if idp_set == "demo":
        idps = [c for c in DEMO_IDPS if c in idps]
    if QUICK:
        idps = idps[:6]
    train, test = split_table(df, 0.5, "site", 0)
    schema = Schema("age", ("sex", "site"), tuple(idps), "sub_id")
    note = (
        f"fcon1000 without {', '.join(FCON_EXCLUDED_SITES)}, `split_table(df, 0.5, 'site', 0)`"
        f": train {len(train)} / test {len(test)}, {len(idps)} IDPs "
        + (
            "(all non-constant measures, QC counts dropped)"
            if idp_set == "all"
            else "(the demo subset, normcore/demo.py IDPS)"
        )
    )
    return Dataset("fcon", train, test, schema, None, note)


# --------------------------------------------------------------------------- dependence


def dependence(test_z: np.ndarray, gen_z: np.ndarray, train_z: np.ndarray | None) -> dict:
    """Dependence and memorisation on the normal-score (z) scale, over the IDPs present.

    corr_err: `metrics.correlation_error` (Pearson) of held-out z vs generated z;
    energy: `metrics.energy_distance` between them (1,000 rows each at most);
    memo: `metrics.memorisation` P(r<1) of generated z against training and held-out z.
    """
    keep = np.isfinite(test_z).all(axis=0) & np.isfinite(gen_z).all(axis=0)
    if train_z is not None:
        keep &= np.isfinite(train_z).all(axis=0)
    out = {"corr_err": np.nan, "energy": np.nan, "memo": np.nan}
    if keep.sum() < 2:
        return out
    t, g = test_z[:, keep], gen_z[:, keep]
    out["corr_err"] = metrics.correlation_error(t, g)
    out["energy"] = metrics.energy_distance(t, g, max_n=1000, seed=DEPENDENCE_SEED)
    if train_z is not None:
        out["memo"] = metrics.memorisation(g, train_z[:, keep], t, seed=DEPENDENCE_SEED)["p_r_lt_1"]
    return out


def gaussian_copula(train_z: np.ndarray, n: int, identity: bool) -> tuple[np.ndarray, float]:
    """n draws of z ~ N(0, R): R the correlation of the training z-scores (the copula
    baseline) or the identity (what a per-IDP model implies). Returns (draws, seconds)."""
    t0 = time.perf_counter()
    d = train_z.shape[1]
    if identity:
        corr = np.eye(d)
    else:
        keep = np.isfinite(train_z).all(axis=1)
        corr = np.corrcoef(np.clip(train_z[keep], -6, 6), rowvar=False)
    rng = np.random.default_rng(DEPENDENCE_SEED)
    draws = rng.multivariate_normal(np.zeros(d), corr, size=n, method="eigh")
    return draws, time.perf_counter() - t0


# ------------------------------------------------------------------------------- models


def run_normcore(ds: Dataset, backbone: str, deviation_rows: list[dict]) -> dict:
    # a synthetic truth's far draws are real, not entry errors (the fit is the same)
    fit = common.fit_or_load(
        ds.name, backbone, ds.train, ds.schema, keep_outliers=ds.spec is not None
    )
    model = fit.model
    t0, c0 = time.perf_counter(), time.process_time()
    scores = model.score(ds.test)
    score_s, score_cpu = time.perf_counter() - t0, time.process_time() - c0
    n, idps = len(ds.test), ds.idps
    pit = common.pit_matrix(scores, idps, n)
    test_z = common.z_matrix(scores, idps, n)
    covs = list(ds.schema.covariates)
    gen = model.sample(ds.test[covs], 1, seed=DEPENDENCE_SEED)
    gen_z = common.z_matrix(model.score(gen), idps, len(gen))
    train_z = common.z_matrix(model.score(ds.train), idps, len(ds.train))
    row = {
        "model": f"normcore {backbone}",
        "fit_s": fit.fit_seconds,
        "fit_cpu_s": fit.fit_cpu_seconds,
        "score_s": score_s,
        "score_cpu_s": score_cpu,
        "reused_fit": fit.reused,
        **common.calibration(pit, ds.test["age"].to_numpy(float)),
        **dependence(test_z, gen_z, train_z),
        "dependence_how": "model.sample at test covariates, scored by the model (z)",
    }
    if ds.spec is not None:
        row["centile_err"] = 100 * float(np.mean(np.abs(pit - true_cdf(ds.spec, ds.test))))
        dev = model.deviation(ds.test)["deviation_centile"].to_numpy() / 100.0
        ks = stats.ks_1samp(dev, stats.uniform.cdf)
        deviation_rows.append(
            {
                "dataset": ds.name,
                "n_idps": len(idps),
                "model": f"normcore {backbone}",
                "n": n,
                "ks": float(ks.statistic),
                "p_value": float(ks.pvalue),
                "ks_noise": common.ks_noise(n),
                "ks_critical": common.ks_critical(n),
                "above_95": float(np.mean(dev > 0.95)),
                "uniform": bool(ks.statistic <= common.ks_critical(n)),
                "ran": RAN,
            }
        )
    return row


def run_peer(ds: Dataset, peer: str, args: argparse.Namespace) -> tuple[dict, np.ndarray | None]:
    """One peer on the dataset; returns its row and training z (for the copula)."""
    name = PEER_NAMES[peer]
    if peer == "hbr" and ds.name not in args.hbr_datasets:
        return {"model": name, "note": HBR_SKIPPED}, None
    limit = {"hbr": args.hbr_max_idps, "gamlss": args.gamlss_max_idps, "blr": args.blr_max_idps}
    limit = limit[peer]
    extra = ["--score-train"]
    if limit and limit < len(ds.idps):
        extra += ["--max-idps", str(limit)]
    if QUICK and peer == "hbr":
        extra += ["--hbr-draws", "50", "--hbr-tune", "50"]
    out_csv = ds.dir / f"{peer}.csv"
    summary = common.run_peer(
        peer,
        ds.dir / "train.csv",
        ds.dir / "test.csv",
        ds.idps,
        out_csv,
        extra,
        timeout=args.peer_timeout,
    )
    if "error" in summary:
        return {"model": name, "note": summary["error"]}, None
    used = summary["idps_used"]
    n = len(ds.test)
    pit, test_z = common.peer_centiles(out_csv, used, n)
    train_z = common.z_matrix(pd.read_csv(out_csv.with_suffix(".train.csv")), used, len(ds.train))
    ok = np.isfinite(pit).all(axis=0)
    statuses = [v["status"] for v in summary["per_idp"].values()]
    notes = []
    if len(used) < len(ds.idps):
        notes.append(f"first {len(used)} of {len(ds.idps)} IDPs (--max-idps: time)")
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} IDP(s) failed")
    fallback = sum(s.startswith("fallback") for s in statuses)
    if fallback:
        notes.append(f"{fallback} IDP(s) fitted without site")
    rhat = [v.get("max_rhat") for v in summary["per_idp"].values() if v.get("max_rhat")]
    if rhat:
        notes.append(f"max R-hat {max(rhat):.3f}")
    gen_z, _ = gaussian_copula(train_z[:, ok], n, identity=True)
    full_gen = np.full((n, len(used)), np.nan)
    full_gen[:, ok] = gen_z
    row = {
        "model": name,
        "fit_s": summary["fit_seconds"],
        "score_s": summary["predict_seconds"],
        **common.calibration(pit, ds.test["age"].to_numpy(float)),
        **dependence(test_z, full_gen, train_z),
        "dependence_how": "independence: z ~ N(0, I)",
        "note": "; ".join(notes),
        "complete": bool(len(used) == len(ds.idps) and ok.all()),
    }
    if ds.spec is not None and ok.any():
        truth = true_cdf(ds.spec, ds.test)[:, [ds.idps.index(c) for c in used]]
        row["centile_err"] = 100 * float(np.nanmean(np.abs(pit[:, ok] - truth[:, ok])))
    row["_test_z"], row["_pit"] = test_z, pit
    return row, train_z


def copula_row(ds: Dataset, peer_rows: list[dict], train_zs: dict[str, np.ndarray]) -> dict:
    """Gaussian copula over the best complete peer's z-scores (best: lowest mean PIT KS).

    Marginal columns are that peer's (a copula leaves marginals unchanged); dependence
    columns compare N(0, R_train) draws with the peer's held-out z-scores."""
    complete = [r for r in peer_rows if r.get("complete")]
    if not complete:
        return {"model": "Gaussian copula", "note": "no peer fitted every IDP"}
    best = min(complete, key=lambda r: r["ks"])
    key = PEER_KEYS[best["model"]]
    train_z = train_zs[key]
    gen_z, seconds = gaussian_copula(train_z, len(ds.test), identity=False)
    row = {
        k: best.get(k)
        for k in ("score_s", "ace", "cov95", "cov95_abs", "ks", "n_idps", "centile_err")
    }
    row.update(
        model=f"Gaussian copula over {best['model']}",
        fit_s=best["fit_s"] + seconds,
        **dependence(best["_test_z"], gen_z, train_z),
        dependence_how="z ~ N(0, R), R = correlation of the peer's training z",
        note=f"marginals = {best['model']} (lowest PIT KS among complete peers)",
    )
    return row


def run_dataset(
    ds: Dataset,
    args: argparse.Namespace,
    deviation_rows: list[dict],
    flush: Callable[[list[dict]], None],
) -> list[dict]:
    """Every model on one dataset; `flush(rows so far)` after each, so that an
    interrupted run keeps what finished."""
    ds.train.to_csv(ds.dir / "train.csv", index=False)
    ds.test.to_csv(ds.dir / "test.csv", index=False)
    rows, peer_rows, train_zs = [], [], {}

    def public(rs: list[dict]) -> list[dict]:
        return [
            {k: v for k, v in r.items() if not k.startswith("_")} | {"dataset": ds.name, "ran": RAN}
            for r in rs
        ]

    for backbone in [m for m in args.models if m in NORMCORE]:
        rows.append(run_normcore(ds, backbone, deviation_rows))
        log(f"compare {ds.name} {backbone}: ks {rows[-1]['ks']:.3f}")
        flush(public(rows))
    for peer in [m for m in args.models if m in PEERS]:
        row, train_z = run_peer(ds, peer, args)
        rows.append(row)
        if train_z is not None:
            peer_rows.append(row)
            train_zs[peer] = train_z
        flush(public(rows))
    if peer_rows:
        rows.append(copula_row(ds, peer_rows, train_zs))
    flush(public(rows))
    return public(rows)


# ------------------------------------------------------------------------------ report


def markdown(
    datasets: dict[str, str], rows: list[dict], dev: list[dict], commands: list[str]
) -> str:
    cols = [
        ("model", "model"),
        ("fit_s", "fit s"),
        ("fit_cpu_s", "fit CPU s"),
        ("score_s", "score s"),
        ("ace", "ACE"),
        ("cov95", "95% cov. err"),
        ("ks", "PIT KS"),
        ("centile_err", "\\|centile − true\\|"),
        ("corr_err", "corr. err"),
        ("energy", "energy dist."),
        ("memo", "P(r<1)"),
        ("n_idps", "IDPs scored"),
        ("ran", "ran (date, code)"),
        ("note", "note"),
    ]
    parts = [
        "## Side by side (issue 3)",
        "",
        "Commands: "
        + "; ".join(f"`python benchmarks/compare.py {c}`" for c in commands)
        + ". Synthetic data: `SyntheticSpec(n_idps=D)` (defaults otherwise), "
        f"`simulate(spec, n, seed={TRAIN_SEED})` for training and seed {TEST_SEED} for the "
        "held-out people. normcore: default settings, seed 0. Peers: `benchmarks/peers.py` "
        "in `.venv-bench` (one IDP at a time; see benchmarks/README.md for their settings), "
        "with `--score-train`.",
        "",
        "How each cell is computed (held-out people only; all metrics from `normcore.metrics`):",
        "",
        "- *fit s*: wall time; normcore `fit_seconds_` (training + reference table); peers: "
        "sum over fitted IDPs of peers.py's per-IDP fit time (process start-up and imports "
        "excluded); copula: the peer's time plus estimating R. Other jobs shared the CPU "
        "during the run, so wall times are inflated for every model alike; *fit CPU s* "
        "(normcore only: CPU seconds of the fitting process, one thread) is the time alone.",
        "- *score s*: normcore `model.score(test)`; peers: peers.py's predict time.",
        "- *ACE*: `metrics.ace_summary` of the PIT values (centile/100) — mean |empirical − "
        "nominal| over equal-count age bins, IDPs and quantiles {0.02, 0.25, 0.5, 0.75, 0.98}.",
        "- *95% cov. err*: mean over IDPs of (fraction inside the central 95% interval − 0.95) "
        "(`metrics.coverage`); negative = intervals too narrow.",
        "- *PIT KS*: mean over IDPs of the one-sample KS statistic of PIT vs U(0,1) "
        "(`metrics.ks_uniform`). Sampling noise at n = 1,000: ≈ "
        f"{common.ks_noise(N_TEST):.3f} (expected statistic of a calibrated model).",
        "- *|centile − true|* (synthetic): mean over people and IDPs of |model centile − "
        "100·`true_cdf`|, centile points.",
        "- Dependence, all on the normal-score (z) scale, so that every model is judged the "
        "same way: *real* = the held-out people's z-scores under that model "
        "(normcore: `score()` z; peers: probit of their centiles). *Generated*: normcore — "
        "one `model.sample()` draw at each held-out person's covariates, scored by the same "
        "model; per-IDP peers — independent N(0, 1) per IDP (what a per-IDP model implies, "
        "i.e. an identity correlation); Gaussian copula — N(0, R) with R the correlation of "
        "the best complete peer's *training* z-scores (`--score-train`).",
        "  - *corr. err*: `metrics.correlation_error` (mean |R_real − R_generated| over IDP "
        "pairs, Pearson).",
        "  - *energy dist.*: `metrics.energy_distance` (squared form; ≤ 1,000 rows each).",
        "  - *P(r<1)*: `metrics.memorisation` — share of generated rows nearer to a training "
        "row than to a held-out row (training z vs held-out z, balanced subsets); ≈ 0.5 = no "
        "memorisation.",
        "- *IDPs scored*: IDPs entering the marginal columns (peers: those that fitted).",
        "- *ran*: the date and commit of the run that produced the row (`--append` reruns "
        "only the models named, so peers' rows can predate normcore's).",
        "",
    ]
    for name, note in datasets.items():
        sub = sorted(
            (r for r in rows if r["dataset"] == name),
            key=lambda r: (
                ROW_ORDER.index(r["model"]) if r["model"] in ROW_ORDER else len(ROW_ORDER)
            ),
        )
        parts += [f"### {name}: {note}", "", common.markdown_table(sub, cols), ""]
    if dev:
        dcols = [
            ("dataset", "data"),
            ("n_idps", "IDPs"),
            ("model", "model"),
            ("n", "n"),
            ("ks", "KS"),
            ("p_value", "p"),
            ("ks_noise", "noise E[KS]"),
            ("ks_critical", "KS 95% crit."),
            ("above_95", "share > 95th"),
            ("uniform", "within noise"),
            ("ran", "ran"),
        ]
        parts += [
            "### Multivariate deviation calibration (synthetic held-out controls)",
            "",
            "`model.deviation(test)` deviation centiles of the held-out people (all are "
            "controls), one-sample KS vs U(0,1). *noise E[KS]*: the expected KS statistic of "
            "n truly uniform values (sqrt(π/2)·ln2/sqrt(n)); *KS 95% crit.*: the value a "
            "uniform sample exceeds with probability 0.05 (`scipy.stats.kstwo`). "
            "*within noise*: KS ≤ the critical value.",
            "",
            common.markdown_table(dev, dcols),
            "",
        ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="synth2,synth20,fcon,synth100,synth200")
    p.add_argument("--models", default=",".join((*NORMCORE, "blr", "hbr", "gamlss")))
    p.add_argument("--fcon-idps", choices=["all", "demo"], default="all")
    p.add_argument(
        "--large-train-rows",
        type=int,
        default=N_TRAIN,
        help="training rows for synth100/synth200 (fewer if time demands)",
    )
    p.add_argument("--blr-max-idps", type=int, default=None)
    p.add_argument("--hbr-max-idps", type=int, default=1)
    p.add_argument(
        "--hbr-datasets", default="synth2,fcon", help="datasets on which HBR runs (time)"
    )
    p.add_argument("--gamlss-max-idps", type=int, default=None)
    p.add_argument("--peer-timeout", type=float, default=None, help="seconds per peer run")
    p.add_argument(
        "--append",
        action="store_true",
        help="keep the previous run's results (results/compare.json) of every dataset and "
        "model this run does not compute",
    )
    args = p.parse_args(argv)
    args.argv = argv
    args.models = [m for m in args.models.split(",") if m]
    args.hbr_datasets = [d for d in args.hbr_datasets.split(",") if d]
    names = [d for d in args.datasets.split(",") if d]
    datasets: dict[str, str] = {}
    rows: list[dict] = []
    dev: list[dict] = []
    commands = [" ".join(argv)]
    previous = common.RESULTS / "compare.json"
    if args.append and previous.exists():
        old = json.loads(previous.read_text())
        rerun = set(args.models) | ({"copula"} if set(args.models) & set(PEERS) else set())

        def kept(r: dict) -> bool:
            return r["dataset"] not in names or _model_key(r) not in rerun

        datasets = dict(old["datasets"])
        rows = [r for r in old["rows"] if kept(r)]
        dev = [r for r in old["deviation"] if kept(r)]
        # Each distinct command once, in the order last run (reruns append the same one).
        commands = [c for c in old.get("commands", []) if c not in commands] + commands
    for name in names:
        if name == "fcon":
            ds = fcon(args.fcon_idps)
        else:
            big = SYNTH_DIMS[name] >= 100
            ds = synthetic(name, args.large_train_rows if big else N_TRAIN)
        datasets[name] = ds.note
        log(f"compare: {ds.note}")
        done = list(rows)

        def flush(current: list[dict], done: list[dict] = done) -> None:
            everything = done + current
            common.write_section(
                "compare",
                markdown(datasets, everything, dev, commands),
                {
                    "rows": everything,
                    "deviation": dev,
                    "datasets": datasets,
                    "commands": commands,
                    "quick": QUICK,
                },
            )

        rows = done + run_dataset(ds, args, dev, flush)
    log("compare done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
