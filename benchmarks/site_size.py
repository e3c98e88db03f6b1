"""New people by the size of their site: are a small site's people scored as well as a big one's?

A site's mean and spread are learned from its own training people, so a new person of a
site with 9 of them carries more error than one of a site with 99. This compares two
versions of the shipped demo model (fcon1000, fitted on assets/demo/fcon1000_train.csv
with the demo's settings) on the held-out half (assets/demo/fcon1000_test.csv): *before*,
the model file at a commit from before the new-person spread's site factor (one pooled
spread for every site), and *now*, the file in the working tree. Per group of sites by
their training people: the share of per-IDP scores outside the central 95 % band (5 %
expected), the share of people whose deviation centile is above 95 (5 % expected) and
the median deviation centile (50 expected); then the deviation per age quintile (KS to
uniform, 5 % critical value, share above 95).

    python benchmarks/site_size.py [--before COMMIT]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import common
import numpy as np
import pandas as pd
from common import ROOT
from deviation_by_age import BANDS, band_row, bands, critical_line

from normcore import metrics
from normcore.model import NormativeModel

BEFORE = "3473a72"
"""The last commit whose demo model had one pooled new-person spread."""
MODEL = "assets/demo/fcon1000.normcore"
SIZES = (0, 12, 20, 60, 10_000)
"""Edges of the groups of sites by training people: 1-12, 13-20, 21-60, over 60."""


def load(commit: str | None) -> NormativeModel:
    """The demo model file at `commit`, or the working tree's."""
    if commit is None:
        return NormativeModel.load(ROOT / MODEL)
    data = subprocess.run(
        ["git", "show", f"{commit}:{MODEL}"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    return NormativeModel.from_bytes(data)


def measure(model: NormativeModel, train: pd.DataFrame, test: pd.DataFrame) -> dict:
    pit = common.pit_matrix(model.score(test), model.idps, len(test))
    outside = np.nanmean((pit < 0.025) | (pit > 0.975), axis=1)
    dev = model.deviation(test)["deviation_centile"].to_numpy(float) / 100.0
    size = test["site"].map(train["site"].value_counts()).to_numpy(float)
    groups = []
    for lo, hi in zip(SIZES[:-1], SIZES[1:], strict=True):
        inside = (size > lo) & (size <= hi)
        sites = test.loc[inside, "site"].nunique()
        groups.append(
            {
                "training_people": f"{lo + 1}-{hi}" if hi < SIZES[-1] else f"over {lo}",
                "sites": int(sites),
                "people": int(inside.sum()),
                "outside_95": float(outside[inside].mean()),
                "deviation_above_95": float(np.mean(dev[inside] > 0.95)),
                "deviation_median": float(np.median(dev[inside])),
            }
        )
    by_age = bands(dev, test["age"].to_numpy(float))
    spread = model.joint_.spread
    return {
        "spread": {"scale": spread.scale, "dof": spread.dof, "site_term": spread.site_term},
        "outside_95": float(outside.mean()),
        "deviation_ks": float(metrics.ks_uniform(dev[:, None])["statistic"].iloc[0]),
        "groups": groups,
        "by_age": by_age,
    }


def markdown(results: dict, before: str) -> str:
    lines = [
        "## New people by site size (`benchmarks/site_size.py`)",
        "",
        "The demo model (fcon1000, the demo's settings) on its held-out half, sites grouped "
        f"by their training people: *before* is the model file at `{before}` (one pooled "
        "new-person spread), *now* the shipped one (spread widened by each site's factor, "
        "README 'How it works' 1). Expected: 5 % outside the 95 % band, 5 % of deviations "
        "above the 95th centile, median deviation centile 50.",
        "",
    ]
    for label, r in results.items():
        s = r["spread"]
        dof = "normal" if s["dof"] is None else f"t, {s['dof']:.1f} dof"
        lines += [
            f"**{label}**: spread x{s['scale']:.3f} ({dof}), site term {s['site_term']:.2f}; "
            f"all people: {100 * r['outside_95']:.1f} % outside the 95 % band, deviation "
            f"KS {r['deviation_ks']:.3f}.",
            "",
        ]
    lines += [
        "| sites' training people | sites | people | outside 95 % band, before / now "
        "| deviation > 95th, before / now | median deviation centile, before / now |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    before_rows, now_rows = (r["groups"] for r in results.values())
    for b, n in zip(before_rows, now_rows, strict=True):
        lines.append(
            f"| {n['training_people']} | {n['sites']} | {n['people']} "
            f"| {100 * b['outside_95']:.1f} % / {100 * n['outside_95']:.1f} % "
            f"| {100 * b['deviation_above_95']:.1f} % / {100 * n['deviation_above_95']:.1f} % "
            f"| {100 * b['deviation_median']:.0f} / {100 * n['deviation_median']:.0f} |"
        )
    lines += [
        "",
        "Deviation by age quintile (KS, * beyond the 5 % critical value; share above the "
        "95th centile):",
        "",
        "| model | " + " | ".join(a["ages"] for a in results["now"]["by_age"]) + " |",
        "| --- |" + " ---: |" * BANDS,
        *(band_row(label, r["by_age"]) for label, r in results.items()),
        "",
        critical_line(results["now"]["by_age"]),
        "",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", default=BEFORE, help="commit of the model file to compare with")
    args = p.parse_args(argv)
    train = pd.read_csv(ROOT / "assets" / "demo" / "fcon1000_train.csv")
    test = pd.read_csv(ROOT / "assets" / "demo" / "fcon1000_test.csv")
    results = {
        f"before ({args.before})": measure(load(args.before), train, test),
        "now": measure(load(None), train, test),
    }
    common.write_section("site_size", markdown(results, args.before), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
