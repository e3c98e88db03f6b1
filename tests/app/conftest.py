"""AppTest fixtures: a tiny demo model built once per session, so page tests stay fast.

NORMCORE_DEMO_DIR (set by dashboard_app on import) points the dashboard at a temporary
directory holding a small model trained on a slice of the repository's fcon1000 demo
halves (four sites, 12 IDPs, few epochs) and its held-out people, so the tests never
depend on the size of the real demo bundle.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from dashboard_app import DEMO_DIR, DEMO_TEST, DEMO_TRAIN, IDPS, SITES

from normcore import NormativeModel, Schema, read_table


def _slice(path: Path) -> pd.DataFrame:
    """One demo half restricted to four sites and twelve recognisable IDPs."""
    df = read_table(path)
    df = df[df["site"].isin(SITES)].reset_index(drop=True)
    return df[["sub_id", "age", "sex", "site", *IDPS]]


@pytest.fixture(scope="session", autouse=True)
def tiny_demo() -> tuple[NormativeModel, pd.DataFrame]:
    """Train and save the tiny demo model once; every AppTest loads it as 'the demo'.

    It learns from the slice of the demo's train half, saved beside it as the reference
    people (their ages draw the fans' rug); the slice of its test half is saved as the
    held-out people the pages show, and returned with the model."""
    train, test = _slice(DEMO_TRAIN), _slice(DEMO_TEST)
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
    train.to_csv(DEMO_DIR / "fcon1000_train.csv", index=False)
    return model, test
