"""What to tell a user about a site adapted from few controls.

Kept apart from the model so that the advice, which quotes the site-adaptation benchmark
(benchmarks/RESULTS.md), can follow new measurements without touching the modelling code.
"""

from __future__ import annotations

SAFE_CONTROLS_PER_SEX = 10
"""Below this many controls per sex an adaptation is flagged (BrainChart's rule of thumb;
see benchmarks/RESULTS.md for the calibration measured at 5, 10, 20 and 50 controls)."""

MEASURED_COVERAGE_95 = {5: (93.3, 94.6), 10: (94.6, 96.6), 20: (95.0, 96.5), 50: (95.5, 95.6)}
"""Controls -> (lowest, highest) share (%) of a held-out site's other people inside the
adapted model's central 95 % bands: fcon1000 sites ICBM and Cambridge_Buckner, mean of 3
draws of controls each (benchmarks/RESULTS.md, site adaptation; rerun benchmarks/adapt.py
and update these when the model changes)."""


def measured_calibration(n_controls: int) -> str:
    """What the adaptation benchmark measured at the nearest tested number of controls
    not above `n_controls` (the smallest tested one below that)."""
    tested = sorted(MEASURED_COVERAGE_95)
    k = max((t for t in tested if t <= n_controls), default=tested[0])
    lo, hi = MEASURED_COVERAGE_95[k]
    return (
        f"in our benchmark, sites adapted from {k} controls had {lo:.0f}-{hi:.0f} % of their "
        "other people inside the 95 % bands (95 % expected)"
    )


def adaptation_warnings(record: dict) -> list[str]:
    """Plain-language warnings for an adaptation record (too few controls per sex)."""
    out = []
    for column, counts in record.get("counts", {}).items():
        for level, n in counts.items():
            if n < SAFE_CONTROLS_PER_SEX:
                out.append(
                    f"site '{record['level']}' was adapted from only {n} controls with "
                    f"{column} = {level}; below {SAFE_CONTROLS_PER_SEX} per group its centiles "
                    "are less reliable (see the adaptation benchmark in benchmarks/RESULTS.md)."
                )
    if record["n_controls"] < 2 * SAFE_CONTROLS_PER_SEX:
        out.append(
            f"site '{record['level']}' was adapted from {record['n_controls']} controls in all; "
            f"at least {2 * SAFE_CONTROLS_PER_SEX} are recommended: "
            f"{measured_calibration(record['n_controls'])}."
        )
    return out
