"""AppTest fixtures: a tiny demo model built once per session, so page tests stay fast.

NORMCORE_DEMO_DIR (set by dashboard_app on import) points the dashboard at a temporary
directory holding a small model trained on a slice of fcon1000 (12 IDPs, few epochs) and
its held-out people, so the tests never depend on the size or presence of the real demo.
"""

from __future__ import annotations

import pytest
from dashboard_app import DEMO_DIR, FCON, IDPS, SITES

from normcore import NormativeModel, Schema, read_table
from normcore.data import split_table


@pytest.fixture(scope="session")
def fcon_small():
    """fcon1000 restricted to four sites and twelve recognisable IDPs."""
    df = read_table(FCON)
    df = df[df["site"].isin(SITES)].reset_index(drop=True)
    return df[["sub_id", "age", "sex", "site", *IDPS]]


@pytest.fixture(scope="session", autouse=True)
def tiny_demo(fcon_small):
    """Train and save the tiny demo model once; every AppTest loads it as 'the demo'."""
    train, test = split_table(fcon_small, 0.5, "site", 0)
    schema = Schema.infer(train, idps=IDPS)
    model = NormativeModel(
        max_epochs=3,
        reference_samples=300,
        grid_points=11,
        sampling_steps=20,
        threads=1,
        network={"width": 64, "depth": 2},
    )
    model.fit(train, schema)
    model.save(DEMO_DIR / "fcon1000.normcore")
    test.to_csv(DEMO_DIR / "fcon1000_test.csv", index=False)
    return model, test
