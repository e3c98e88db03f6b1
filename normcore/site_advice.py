"""What to tell a user about a site adapted from few controls.

Kept apart from the model so that the advice, which quotes the site-adaptation benchmark
(benchmarks/RESULTS.md), can follow new measurements without touching the modelling code.
"""

from __future__ import annotations

SAFE_CONTROLS_PER_SEX = 10
"""Below this many controls per sex an adaptation is flagged (BrainChart's rule of thumb;
see benchmarks/RESULTS.md for the calibration measured at 5, 10, 20 and 50 controls)."""


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
            f"at least {2 * SAFE_CONTROLS_PER_SEX} are recommended."
        )
    return out
