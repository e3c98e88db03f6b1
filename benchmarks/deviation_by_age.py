"""The multivariate deviation of held-out controls, calibrated at every age? (issue 17 item 5)

Held-out controls' deviation centiles should be uniform within every age band, not only
over everyone. Measured on two truths, each with a fit of the package defaults (FiLM):

- *subgroup*: `SyntheticSpec(n_idps=20, dependence="subgroup")`, 3,000 training and
  1,000 held-out people (seeds 1 and 2), a truth whose coupling between IDPs and whose
  subgroup share grow with age;
- *fcon1000*: the demo's halves (assets/demo), fitted with the demo's own settings
  (`normcore.demo.build`'s), scored on the held-out people of the training sites.

For each, the deviation centiles of the held-out people under four calibrations of the
same fitted model: *as fitted* (the fit's calibration: its site shifts, and its age trend
where one was measured beyond noise), *without site shifts* (the same, the site shifts
dropped), *pooled* (the same shift and spread only: one correction for every age and
site, as before the age trend) and *none*. Per age band: the people,
the KS distance to uniform (the 5 % critical value beside it) and the share above the
95th centile.

    python benchmarks/deviation_by_age.py
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import common
import numpy as np
import pandas as pd
from common import ROOT

from normcore import Schema, metrics
from normcore.demo import SCHEMA, SETTINGS
from normcore.model import NormativeModel
from normcore.reference import DeviationCalibration
from normcore.synthetic import SyntheticSpec, idp_names, simulate

BANDS = 5


def subgroup_truth() -> tuple[pd.DataFrame, pd.DataFrame, Schema]:
    spec = SyntheticSpec(n_idps=20, dependence="subgroup")
    schema = Schema("age", ("sex", "site"), tuple(idp_names(spec)), "subject_id")
    return simulate(spec, 3000, seed=1), simulate(spec, 1000, seed=2), schema


def fcon_truth() -> tuple[pd.DataFrame, pd.DataFrame, Schema]:
    train = pd.read_csv(ROOT / "assets" / "demo" / "fcon1000_train.csv")
    test = pd.read_csv(ROOT / "assets" / "demo" / "fcon1000_test.csv")
    return train, test[test["site"].isin(train["site"].unique())], SCHEMA


def by_band(model: NormativeModel, test: pd.DataFrame, calibration: DeviationCalibration) -> list:
    model.deviation_calibration_ = calibration
    u = model.deviation(test)["deviation_centile"].to_numpy() / 100
    return bands(u, test[model.schema.age].to_numpy(float))


def bands(u: np.ndarray, ages: np.ndarray) -> list[dict]:
    """Per age quintile of `ages`: people, KS of deviation centiles `u` (0-1) to uniform,
    its 5 % critical value and the share above 0.95."""
    edges = np.quantile(ages, np.linspace(0, 1, BANDS + 1))
    # each person in one band: [lo, hi) but the last, [lo, hi] (ages are often whole years)
    band = np.clip(np.searchsorted(edges, ages, side="right") - 1, 0, BANDS - 1)
    rows = []
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        inside = (band == b) & np.isfinite(u)
        rows.append({
            "ages": f"{lo:.0f}-{hi:.0f}", "n": int(inside.sum()),
            "ks": float(metrics.ks_uniform(u[inside])["statistic"].iloc[0]),
            "critical": common.ks_critical(int(inside.sum())),
            "above_95": float(np.mean(u[inside] > 0.95)),
        })  # fmt: skip
    return rows


def measure(name: str) -> dict:
    train, test, schema = subgroup_truth() if name == "subgroup" else fcon_truth()
    if name == "subgroup":  # the joint benchmark's fit of the same truth, shared
        fit = common.fit_or_load("joint_subgroup20", "film", train, schema, keep_outliers=True)
    else:
        fit = common.fit_or_load("fcon1000_demo", "film", train, schema, settings=SETTINGS)
    model = fit.model
    own = model.deviation_calibration_
    variants = {
        "as fitted": own,
        "without site shifts": dataclasses.replace(own, site_shifts=()),
        "pooled": DeviationCalibration(own.shift, own.spread),
        "none": DeviationCalibration(),
    }
    out = {"calibration": dataclasses.asdict(own), "bands": {}}
    for label, calibration in variants.items():
        out["bands"][label] = by_band(model, test, calibration)
    model.deviation_calibration_ = own
    return out


def band_row(label: str, rows: list[dict]) -> str:
    """One table row: each band's KS (* beyond its 5 % critical value) and share above 95."""
    cells = [
        f"KS {r['ks']:.3f}{'*' if r['ks'] > r['critical'] else ''}, "
        f"{100 * r['above_95']:.1f} % > 95th"
        for r in rows
    ]
    return f"| {label} | " + " | ".join(cells) + " |"


def critical_line(rows: list[dict]) -> str:
    critical = ", ".join(f"{r['critical']:.3f} (n {r['n']})" for r in rows)
    return f"5 % critical KS per band: {critical}; * marks a band beyond it."


def markdown(results: dict) -> str:
    lines = [
        "## Deviation by age (`benchmarks/deviation_by_age.py`, issue 17 item 5)",
        "",
        "Held-out controls' deviation centiles per age band (quintiles of age), under the "
        "fitted model's calibration (*as fitted*), the same without its site shifts, the same "
        "shift and spread without the age slopes or site shifts (*pooled*), and none. KS to "
        "uniform with the 5 % critical value; share above the 95th centile (5 % expected). "
        "Truths and settings: the script's docstring.",
        "",
    ]
    for name, result in results.items():
        c = result["calibration"]
        lines += [
            f"**{name}**: calibration as fitted: shift {c['shift']:+.3f}, spread "
            f"{c['spread']:.3f}"
            + (
                f", shift slope {c['shift_slope']:+.4f} per year, log-spread slope "
                f"{c['log_spread_slope']:+.4f} per year, over ages "
                f"{c['ages'][0]:.0f}-{c['ages'][1]:.0f}"
                if c["shift_slope"] or c["log_spread_slope"]
                else ", no age trend"
            )
            + (
                f"; site shifts from {min(c['site_shifts']):+.2f} to "
                f"{max(c['site_shifts']):+.2f} over {len(c['site_shifts'])} sites."
                if c["site_shifts"]
                else "; no site shifts."
            ),
            "",
            "| calibration | " + " | ".join(r["ages"] for r in result["bands"]["none"]) + " |",
            "| --- |" + " ---: |" * BANDS,
        ]
        for label, rows in result["bands"].items():
            lines.append(band_row(label, rows))
        lines += ["", critical_line(result["bands"]["none"]), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--truths", nargs="+", default=["subgroup", "fcon1000"])
    args = p.parse_args(argv)
    results = {name: measure(name) for name in args.truths}
    common.write_section("deviation_by_age", markdown(results), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
