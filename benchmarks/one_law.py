"""One law, not two (issue 17, item 4): do the model's draws follow its own centiles?

`model.sample` draws from the denoiser; `centiles` and `score` take the margins of every
sex x site seen in training from the first stage. A teacher who plots draws over the fans
sees the two laws side by side, so they must agree. Measured on the bundled fcon1000 demo
model as it is now and as it was at an earlier commit (`--before COMMIT`, read from git):
at each of a set of (site, sex, age) points, `--draws` draws are scored by the same model,
and for each IDP the share of draws below each of the model's own centiles should be that
centile. Reported per point, over the 47 IDPs: the mean and largest KS statistic of the
draws' centiles against U(0, 1) (the 5 % critical value beside it) and the mean
|empirical CDF - u| in centile points.

    python benchmarks/one_law.py --before 7f96ce4
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import common
import numpy as np
import pandas as pd
from common import ROOT, log

from normcore import metrics
from normcore.model import NormativeModel

DEMO = "assets/demo/fcon1000.normcore"
POINTS = (
    ("Beijing_Zang", "0", 22.0),
    ("Cambridge_Buckner", "0", 30.0),
    ("ICBM", "1", 25.0),
    ("ICBM", "1", 45.0),
    ("ICBM", "1", 70.0),
    ("Milwaukee_b", "1", 45.0),
    ("Milwaukee_b", "1", 70.0),
    ("Baltimore", "0", 30.0),
)
"""Large and small sites, young and old ages (the demo's people are mostly 18-30)."""


def agreement(model: NormativeModel, site: str, sex: str, age: float, n: int) -> dict:
    """KS and mean |ECDF - u| of the model's centiles of its own draws at one point."""
    cov = pd.DataFrame({"age": [age], "sex": [sex], "site": [site]})
    draws = model.sample(cov, n, seed=11)
    draws[model.schema.id or "sub_id"] = [f"d{i}" for i in range(len(draws))]
    scores = model.score(draws)
    pit = scores.pivot(index=model.schema.id or "sub_id", columns="idp", values="centile") / 100
    ks = metrics.ks_uniform(pit)["statistic"].to_numpy()
    u = np.sort(pit.to_numpy(), axis=0)
    gap = 100.0 * np.mean(np.abs(u - ((np.arange(len(u)) + 0.5) / len(u))[:, None]), axis=0)
    return {
        "site": site, "sex": sex, "age": age, "ks_mean": float(np.mean(ks)),
        "ks_max": float(np.max(ks)), "gap_points": float(np.mean(gap)),
    }  # fmt: skip


def model_at(commit: str | None) -> NormativeModel:
    """The demo model in the working tree, or as committed at `commit`."""
    if commit is None:
        return NormativeModel.load(ROOT / DEMO, device="cpu")
    data = subprocess.run(
        ["git", "show", f"{commit}:{DEMO}"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    return NormativeModel.from_bytes(data, device="cpu")


def markdown(rows: list[dict], n: int, before: str | None) -> str:
    crit = 1.36 / np.sqrt(n)
    lines = [
        "## One law: the model's draws against its own centiles (`benchmarks/one_law.py`)",
        "",
        f"The bundled fcon1000 demo model; {n:,} draws per point, scored by the same model; "
        f"per point, over its 47 IDPs: KS of the draws' centiles against U(0, 1) (mean and "
        f"largest; 5 % critical value {crit:.3f}) and mean |ECDF - u| in centile points. "
        f"*before*: the demo model at `{before}` (draws as the denoiser makes them); "
        "*now*: the denoiser's mean error at each sex x site seen in training removed "
        "(`ReferenceTable.draw_offset`).",
        "",
        "| model | site | sex | age | KS mean | KS max | \\|ECDF − u\\| (points) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['site']} | {r['sex']} | {r['age']:.0f} | {r['ks_mean']:.3f} "
            f"| {r['ks_max']:.3f} | {r['gap_points']:.2f} |"
        )
    lines.append("")
    for label in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == label]
        lines.append(
            f"- {label}: KS mean over points {np.mean([r['ks_mean'] for r in mine]):.3f}, "
            f"largest {max(r['ks_max'] for r in mine):.3f}; mean gap "
            f"{np.mean([r['gap_points'] for r in mine]):.2f} points."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", help="a commit whose demo model to measure beside today's")
    p.add_argument("--draws", type=int, default=2000)
    args = p.parse_args(argv)
    rows = []
    for label, commit in [("before", args.before), ("now", None)]:
        if label == "before" and commit is None:
            continue
        model = model_at(commit)
        for site, sex, age in POINTS:
            log(f"{label} {site} {sex} {age}")
            rows.append({"model": label, **agreement(model, site, sex, age, args.draws)})
    common.write_section(
        "one_law", markdown(rows, args.draws, args.before),
        {"rows": rows, "draws": args.draws, "before": args.before},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
