"""Site-adaptation benchmark (issue 5 point 3): hold out whole fcon1000 sites, adapt with
5, 10, 20 and 50 of their controls, and measure calibration on the site's remaining
people, against the unadapted model and PCNtoolkit BLR's own transfer on the same split.

Why: a clinic's scanner is almost never a training site. Users need to know how many
controls make a new site's centiles trustworthy, and whether normcore's adaptation
(one learned site embedding, everything else frozen) is at least as good as the
established alternative.

    python benchmarks/adapt.py [--sites ICBM,Cambridge_Buckner] [--repeats 3]
    BENCH_QUICK=1 python benchmarks/adapt.py      # tiny end-to-end check
"""

from __future__ import annotations

import argparse
import sys
import time

import common
import numpy as np
import pandas as pd
from common import QUICK, log

from normcore.demo import IDPS as DEMO_IDPS
from normcore.schema import Schema

EXCLUDED_SITES = ("NewYork_a_ADHD",)
SIZES = (5, 10) if QUICK else (5, 10, 20, 50)
ADAPT_STEPS = 400
BACKBONE = "film"


def load() -> tuple[pd.DataFrame, Schema]:
    df = common.fcon_table()
    df = df[~df["site"].isin(EXCLUDED_SITES)].reset_index(drop=True)
    df["sex"] = df["sex"].astype(str)
    idps = [c for c in DEMO_IDPS if c in df.columns]
    if QUICK:
        idps = idps[:5]
    return df, Schema("age", ("sex", "site"), tuple(idps), "sub_id")


def calibration_of(scores: pd.DataFrame, idps: list[str], people: pd.DataFrame) -> dict:
    pit = common.pit_matrix(scores, idps, len(people))
    out = common.calibration(pit, people["age"].to_numpy(float))
    out["cov95_pct"] = 100 * (0.95 + out["cov95"]) if np.isfinite(out["cov95"]) else np.nan
    return out


def run_site(
    df: pd.DataFrame, schema: Schema, site: str, repeats: int, blr_repeats: int
) -> list[dict]:
    idps = list(schema.idps)
    train = df[df["site"] != site].reset_index(drop=True)
    site_df = df[df["site"] == site].reset_index(drop=True)
    model = common.fit_or_load(f"adapt_wo_{site}", BACKBONE, train, schema).model
    work = common.OUT / "adapt" / site
    work.mkdir(parents=True, exist_ok=True)
    train_csv = work / "train.csv"
    train.to_csv(train_csv, index=False)
    rows = []
    sizes = [k for k in SIZES if k < len(site_df) - 10]
    for k in sizes:
        for r in range(repeats):
            rng = np.random.default_rng([sum(map(ord, site)), k, r])
            order = rng.permutation(len(site_df))
            controls = site_df.iloc[order[:k]].reset_index(drop=True)
            rest = site_df.iloc[order[k:]].reset_index(drop=True)
            base = {"site": site, "n_site": len(site_df), "k": k, "repeat": r, "n_eval": len(rest)}
            base["sexes"] = ", ".join(
                f"{s}:{n}" for s, n in controls["sex"].value_counts().sort_index().items()
            )
            # unadapted: the held-out site is unseen, so it is scored with the 'unknown' level
            rows.append(
                {
                    **base,
                    "method": "normcore unadapted",
                    **calibration_of(model.score(rest), idps, rest),
                }
            )
            t0 = time.process_time()
            adapted = model.adapt(controls, steps=ADAPT_STEPS)
            adapt_s = time.process_time() - t0
            rows.append(
                {
                    **base,
                    "method": "normcore adapted",
                    "seconds": adapt_s,
                    **calibration_of(adapted.score(rest), idps, rest),
                }
            )
            log(
                f"adapt {site} k={k} r={r}: unadapted ks {rows[-2]['ks']:.3f}, "
                f"adapted ks {rows[-1]['ks']:.3f} ({adapt_s:.0f}s)"
            )
            if r < blr_repeats:
                rows.append({**base, **blr_transfer(work, train_csv, controls, rest, idps, k, r)})
    return rows


def blr_transfer(work, train_csv, controls, rest, idps, k, r) -> dict:
    """PCNtoolkit BLR fitted on the other sites, transferred with the same controls
    (peers.py --transfer-adapt), scored on the same remaining people. Sex is a 0/1
    covariate, so that only site is a batch effect and a transfer from a few controls
    need not contain both sexes."""
    tag = f"k{k}_r{r}"
    adapt_csv, test_csv, out_csv = (
        work / f"{tag}_adapt.csv",
        work / f"{tag}_test.csv",
        work / f"blr_{tag}.csv",
    )
    controls.to_csv(adapt_csv, index=False)
    rest.to_csv(test_csv, index=False)
    summary = common.run_peer(
        "blr",
        train_csv,
        test_csv,
        idps,
        out_csv,
        ["--transfer-adapt", str(adapt_csv), "--sex-as", "covariate"],
    )
    if "error" in summary:
        return {"method": "PCNtoolkit BLR transfer", "note": summary["error"]}
    pit, _ = common.peer_centiles(out_csv, summary["idps_used"], len(rest))
    failed = summary["n_failed"]
    return {
        "method": "PCNtoolkit BLR transfer",
        "seconds": summary["fit_seconds"],
        **common.calibration(pit, rest["age"].to_numpy(float)),
        "note": f"{failed} IDP(s) failed" if failed else "",
    }


def summarise(rows: list[dict]) -> pd.DataFrame:
    """Mean over repeats per site, k and method (with the number of repeats)."""
    frame = pd.DataFrame(rows)
    for col in ("ks", "cov95", "ace", "seconds"):
        if col not in frame:
            frame[col] = np.nan
    if "note" not in frame:
        frame["note"] = ""
    frame["note"] = frame["note"].fillna("").astype(str)
    grouped = frame.groupby(["site", "k", "method"], sort=False)
    out = grouped.agg(
        n_site=("n_site", "first"),
        n_eval=("n_eval", "first"),
        repeats=("repeat", "nunique"),
        ks=("ks", "mean"),
        ks_sd=("ks", "std"),
        cov95=("cov95", "mean"),
        ace=("ace", "mean"),
        seconds=("seconds", "mean"),
        note=("note", lambda s: "; ".join(sorted({v for v in s if v}))),
    ).reset_index()
    out["cov95_pct"] = 100 * (0.95 + out["cov95"])
    out["cov95_err_pts"] = 100 * out["cov95"]
    return out


def markdown(summary: pd.DataFrame, rows: list[dict], args) -> str:
    cols = [
        ("site", "held-out site"),
        ("k", "controls"),
        ("n_eval", "people scored"),
        ("method", "method"),
        ("repeats", "repeats"),
        ("ks", "PIT KS"),
        ("cov95_pct", "95% coverage %"),
        ("cov95_err_pts", "coverage err (pts)"),
        ("ace", "ACE"),
        ("seconds", "adapt/transfer s"),
        ("note", "note"),
    ]
    records = summary.to_dict("records")
    for r in records:
        r["k"] = int(r["k"])
        r["repeats"] = int(r["repeats"])
    sexes = pd.DataFrame(rows).drop_duplicates(["site", "k", "repeat"])
    sex_note = "; ".join(
        f"{s} k={int(k)}: " + " / ".join(g["sexes"])
        for (s, k), g in sexes.groupby(["site", "k"], sort=False)
    )
    return "\n".join(
        [
            "## Site adaptation (issue 5)",
            "",
            "Command: `python benchmarks/adapt.py " + " ".join(args.argv) + "`. fcon1000 "
            f"without {', '.join(EXCLUDED_SITES)}, the {len(DEMO_IDPS)} IDPs of "
            "normcore/demo.py (`IDPS`). For each held-out site, one normcore "
            f"{BACKBONE} model (default settings) is fitted on all other sites; then, for each "
            "number of controls k and each repeat (seeded), k people of the site are drawn as "
            "controls and the site's *remaining* people are scored by: the unadapted model "
            "(the site is unseen, so the 'unknown' site level), the adapted model "
            f"(`model.adapt(controls, steps={ADAPT_STEPS})`), and PCNtoolkit BLR fitted on the "
            "same other sites and transferred with the same controls (`peers.py --model blr "
            "--transfer-adapt CONTROLS --sex-as covariate`: sex as a 0/1 covariate so only "
            "site is a batch effect and a few controls need not include both sexes).",
            "",
            "Cells are means over repeats. *PIT KS*: mean over IDPs of the one-sample KS "
            "statistic (`metrics.ks_uniform`); *95% coverage*: mean over IDPs of the share "
            "inside the central 95% interval (`metrics.coverage`); *ACE*: "
            "`metrics.ace_summary`. The sampling noise of KS at n people is about "
            "0.87/sqrt(n) (0.10 at n = 75, 0.06 at n = 190). *adapt/transfer s*: normcore "
            "`adapt()` CPU time (embedding + that site's reference table; CPU, as the CPU "
            "was shared with other jobs); BLR: peers.py fit "
            "time over IDPs (fit on the other sites plus transfer).",
            "",
            common.markdown_table(records, cols),
            "",
            f"Controls per sex (sex 0 / 1) in each repeat: {sex_note}.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sites", default="Bangor" if QUICK else "ICBM,Cambridge_Buckner")
    p.add_argument("--repeats", type=int, default=1 if QUICK else 3)
    p.add_argument(
        "--blr-repeats",
        type=int,
        default=1,
        help="repeats that also run the PCNtoolkit BLR transfer (~1 min each; 0 = none)",
    )
    args = p.parse_args(argv)
    args.argv = argv
    df, schema = load()
    rows: list[dict] = []
    for site in [s for s in args.sites.split(",") if s]:
        if site not in set(df["site"]):
            raise SystemExit(f"unknown site {site!r}")
        rows += run_site(df, schema, site, args.repeats, args.blr_repeats)
        summary = summarise(rows)
        common.write_section(
            "adapt",
            markdown(summary, rows, args),
            {"rows": rows, "summary": summary.to_dict("records"), "quick": QUICK},
        )
    log("adapt done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
