"""The small synthetic world the hardening tests share: three IDPs, two sites, tiny models.

Enough for every code path of the dashboard and the package, in seconds, and with no file
from outside the repository.
"""

from __future__ import annotations

from pathlib import Path

from normcore import NormativeModel, Schema
from normcore.synthetic import SyntheticSpec, idp_names, simulate

SPEC = SyntheticSpec(n_idps=3, n_sites=2)
SCHEMA = Schema(
    age="age", categorical=("sex", "site"), idps=tuple(idp_names(SPEC)), id="subject_id"
)
TINY = dict(
    max_epochs=8, reference_samples=300, grid_points=11, sampling_steps=10,
    network=dict(width=32, depth=2),
)
"""Model settings that train in seconds: fast, not accurate."""


def fit_tiny(n: int, seed: int) -> NormativeModel:
    """A tiny model fitted on `n` simulated people."""
    return NormativeModel(**TINY).fit(simulate(SPEC, n, seed=seed), SCHEMA)


def write_tiny_demo(directory: Path) -> None:
    """A tiny model and 60 held-out people, named as the dashboard's demo files."""
    fit_tiny(240, seed=21).save(directory / "fcon1000.normcore")
    simulate(SPEC, 60, seed=22).to_csv(directory / "fcon1000_test.csv", index=False)
