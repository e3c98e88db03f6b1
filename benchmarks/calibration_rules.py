"""How the deviation's calibration is measured: four rules on the same fitted models.

The model measures the deviation centile's shift and spread (and their age slopes) twice:
on its out-of-fold training people (many, but the network trained on most of them) and on
its validation people (new to the network, but few). This compares, on the same fits and
the same held-out people, what each way of using them gives (normcore.model's
`_calibrate_deviation`):

- *validation people only*: each number measured on the validation people, applied when
  3 standard errors from no correction (the rule before 2026-12-03);
- *out of fold unless 3 SE*: the out-of-fold numbers, replaced by the validation people's
  where they differ by more than 3 standard errors (code 5c2ec4a);
- *weighed*: the out-of-fold numbers moved towards the validation people's by
  d^2 / (d^2 + se^2) of their difference (the composite estimator; the model's rule from
  code e5e635d to 2424a96);
- *garrote*: moved by max(0, 1 - (2 se)^2 / d^2) of it: nothing within two standard
  errors (`reference.corrected_calibration`, the model's since).

Truths: the side by side's copula truth at 2, 20 and 100 IDPs (`compare.py`'s fits), the
joint benchmark's subgroup truth at 100 IDPs (`joint.py`'s fit), and fcon1000 with the
demo's settings (`deviation_by_age.py`'s fit, the shipped demo's, at seed 0).

One fit per truth can be lucky or unlucky: with `--seeds 0,1,2` each truth is fitted once
per seed (the model's seed: its validation people, network and draws), and a summary counts,
per rule, the held-out KS and age fifths beyond their 5 % critical values over all fits,
beside what a perfectly calibrated deviation would give by chance alone (5 % of the tests).

    python benchmarks/calibration_rules.py [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import sys

import common
import numpy as np
import pandas as pd
from common import ROOT, log
from deviation_by_age import BANDS, bands
from scipy import stats

from normcore.demo import SCHEMA, SETTINGS
from normcore.first_stage import fit_model_stages, level_counts
from normcore.model import NormativeModel, _idp_values, _reference_z, deviation_measurements
from normcore.reference import (
    DeviationCalibration,
    corrected_calibration,
    deviation_calibration,
    moved_calibration,
)
from normcore.schema import Schema
from normcore.synthetic import SyntheticSpec, idp_names, simulate
from normcore.train import validation_split


def truths(seed: int) -> dict[str, tuple[NormativeModel, pd.DataFrame, pd.DataFrame]]:
    """Each truth's (model fitted with `seed`, training table, held-out table)."""
    out = {}
    subgroup = SyntheticSpec(n_idps=100, dependence="subgroup")
    for label, name, spec in (
        ("copula truth, 2 IDPs", "synth2", SyntheticSpec(n_idps=2)),
        ("copula truth, 20 IDPs", "synth20", SyntheticSpec(n_idps=20)),
        ("copula truth, 100 IDPs", "synth100", SyntheticSpec(n_idps=100)),
        ("subgroup truth, 100 IDPs", "joint_subgroup100", subgroup),
    ):
        train, test = simulate(spec, 3000, seed=1), simulate(spec, 1000, seed=2)
        schema = Schema("age", ("sex", "site"), tuple(idp_names(spec)), "subject_id")
        model = common.fit_or_load(name, "film", train, schema, seed, keep_outliers=True).model
        out[label] = (model, train, test)
    train = pd.read_csv(ROOT / "assets" / "demo" / "fcon1000_train.csv")
    test = pd.read_csv(ROOT / "assets" / "demo" / "fcon1000_test.csv")
    test = test[test["site"].isin(train["site"].unique())]
    fit = common.fit_or_load("fcon1000_demo", "film", train, SCHEMA, seed, settings=SETTINGS)
    out["fcon1000 (the demo's fit)"] = (fit.model, train, test)
    return out


def rules(model: NormativeModel, train: pd.DataFrame) -> dict[str, DeviationCalibration]:
    """The four calibrations of one fitted model, from its own training table."""
    schema, encoder, config = model.schema, model.encoder_, model.config
    values = _idp_values(train, schema)
    ages = train[schema.age].to_numpy(float)
    age_z, (codes, _) = encoder.encode_age(ages), encoder.encode_categories(train)
    val, rows_train = validation_split(len(values), config.train, config.seed)
    split, _, spread, new_scores = fit_model_stages(
        values, age_z, codes, encoder.n_levels, rows_train, config.seed
    )
    split_scores = split.transform(values, age_z, codes)
    table = model.reference_
    start, measured = deviation_measurements(
        table, schema, split_scores, new_scores, ages, codes, rows_train, val, spread,
        encoder.n_levels,
    )  # fmt: skip
    sites = DeviationCalibration(site_column=start.site_column, site_shifts=start.site_shifts)
    counts = level_counts(codes[rows_train], encoder.n_levels) if spread.site_term else ()
    factor = spread._replace(level_counts=counts).site_factor(codes[val])
    z_val, _ = _reference_z(table, split_scores[val] / factor[:, None], ages[val], codes[val])
    alone = deviation_calibration(table, codes[val], ages[val], z_val, sites)
    return {
        "validation people only": alone,
        "out of fold unless 3 SE": _unless_beyond(start, measured, ages[val]),
        "weighed": _weighed(start, measured, ages[val]),
        "garrote at 2 SE (the model's)": corrected_calibration(start, measured, ages[val]),
    }


def _weighed(
    start: DeviationCalibration, measured: DeviationCalibration, ages: np.ndarray
) -> DeviationCalibration:
    """`start`'s numbers moved towards `measured`'s by d^2 / (d^2 + se^2) of their
    difference d (the composite estimator the model used before the garrote)."""
    return moved_calibration(start, measured, ages, lambda d, se: d * d / (d * d + se * se))


def _unless_beyond(
    start: DeviationCalibration, measured: DeviationCalibration, ages: np.ndarray
) -> DeviationCalibration:
    """`start`'s numbers, each replaced by `measured`'s where they differ by more than 3
    of its standard errors (`reference.calibration_standard_errors`, as the weighing)."""
    return moved_calibration(start, measured, ages, lambda d, se: float(abs(d) > 3 * se))


def measure(seed: int) -> list[dict]:
    out = []
    for label, (model, train, test) in truths(seed).items():
        log(f"calibration rules: {label}, seed {seed}")
        ages = test[model.schema.age].to_numpy(float)
        own = model.deviation_calibration_
        for rule, calibration in rules(model, train).items():
            model.deviation_calibration_ = calibration
            u = model.deviation(test)["deviation_centile"].to_numpy(float) / 100
            ok = np.isfinite(u)
            out.append({
                "truth": label, "seed": seed, "rule": rule, "shift": calibration.shift,
                "spread": calibration.spread, "n": int(ok.sum()),
                "ks": float(stats.kstest(u[ok], "uniform").statistic),
                "critical": common.ks_critical(int(ok.sum())),
                "above_95": float(np.mean(u[ok] > 0.95)), "bands": bands(u, ages),
            })  # fmt: skip
        model.deviation_calibration_ = own
    return out


def markdown(rows: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        "## How the deviation's calibration is measured (`benchmarks/calibration_rules.py`)",
        "",
        "Four rules for the deviation centile's shift and spread, on the same fitted "
        "models and held-out people (the script's docstring): held-out KS to uniform "
        "(5 % critical value), share above the 95th centile, and the age fifths beyond "
        f"their critical value (of {BANDS}; the worst band's KS and critical value). "
        f"Each truth fitted with the model's seed {', '.join(map(str, seeds))}.",
        "",
        "| truth | seed | rule | shift | spread | KS (crit.) | > 95th | bands beyond noise "
        "| worst band |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        worst = max(r["bands"], key=lambda b: b["ks"] - b["critical"])
        lines.append(
            f"| {r['truth']} | {r['seed']} | {r['rule']} | {r['shift']:+.3f} "
            f"| {r['spread']:.3f} | {r['ks']:.3f} ({r['critical']:.3f}) "
            f"| {100 * r['above_95']:.1f} % | {_bands_beyond(r)} "
            f"| {worst['ks']:.3f} at {worst['ages']} ({worst['critical']:.3f}) |"
        )
    return "\n".join(lines + ["", *_summary(rows)]) + "\n"


def _bands_beyond(row: dict) -> int:
    return sum(b["ks"] > b["critical"] for b in row["bands"])


def _summary(rows: list[dict]) -> list[str]:
    """Per rule, over every fit: tests beyond their 5 % critical value, and how many of
    as many tests a calibrated deviation would fail by chance (5 %, with the count's
    95 % range from the binomial law)."""
    lines = [
        "**Over all fits** (beyond noise / tests; a calibrated deviation fails 5 % of "
        "tests by chance, the range is the binomial 95 % range of that count):",
        "",
        "| rule | fits | held-out KS beyond | age fifths beyond | chance alone: fits, fifths |",
        "|---|---|---|---|---|",
    ]
    for rule in dict.fromkeys(r["rule"] for r in rows):
        mine = [r for r in rows if r["rule"] == rule]
        fifths = sum(len(r["bands"]) for r in mine)
        pooled = sum(r["ks"] > r["critical"] for r in mine)
        lines.append(
            f"| {rule} | {len(mine)} | {pooled} | {sum(map(_bands_beyond, mine))} "
            f"| {_chance(len(mine))}, {_chance(fifths)} |"
        )
    return lines


def _chance(tests: int) -> str:
    lo, hi = stats.binom.interval(0.95, tests, 0.05)
    return f"{int(lo)}-{int(hi)} of {tests}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="the fits' seeds, comma-separated")
    args = parser.parse_args(argv)
    rows = [row for seed in map(int, args.seeds.split(",")) for row in measure(seed)]
    common.write_section("calibration_rules", markdown(rows), {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
