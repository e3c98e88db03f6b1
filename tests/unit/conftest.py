"""Shared fixtures: small synthetic tables and one tiny fitted model per test session."""

from __future__ import annotations

import pandas as pd
import pytest

from normcore.model import NormativeModel
from normcore.schema import Schema
from normcore.synthetic import SyntheticSpec, idp_names, simulate

TINY = dict(max_epochs=12, reference_samples=400, grid_points=11, network=dict(width=32, depth=2))
SPEC = SyntheticSpec(n_idps=3, n_sites=2)


@pytest.fixture(scope="session")
def tiny_settings() -> dict:
    """Model settings for tests that fit: fast, not accurate."""
    return dict(TINY)


@pytest.fixture(scope="session")
def spec() -> SyntheticSpec:
    return SPEC


@pytest.fixture(scope="session")
def train_df() -> pd.DataFrame:
    return simulate(SPEC, 300, seed=1)


@pytest.fixture(scope="session")
def test_df() -> pd.DataFrame:
    return simulate(SPEC, 60, seed=2)


@pytest.fixture(scope="session")
def schema() -> Schema:
    return Schema(
        age="age", categorical=("sex", "site"), idps=tuple(idp_names(SPEC)), id="subject_id"
    )


@pytest.fixture(scope="session")
def fitted(train_df: pd.DataFrame, schema: Schema) -> NormativeModel:
    """A tiny model: enough to exercise every code path, not to be accurate."""
    return NormativeModel(**TINY).fit(train_df, schema)


@pytest.fixture(scope="session")
def fitted_prior(train_df: pd.DataFrame, schema: Schema) -> NormativeModel:
    """The tiny model with the denoiser's Gaussian prior (`gaussian_prior=True`)."""
    return NormativeModel(**TINY, gaussian_prior=True).fit(train_df, schema)
